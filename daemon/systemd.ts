/**
 * systemd glue: the listening socket it passes (socket activation) and the notify protocol
 * (READY, STATUS, RELOADING, STOPPING, WATCHDOG). Both are plain environment contracts
 * (sd_listen_fds(3), sd_notify(3)); neither needs libsystemd, and without systemd both are
 * no-ops, so the daemon runs the same by hand, in tests and under any supervisor.
 */
import { HsmintError } from '../core/errors.js';

/** The first passed descriptor (SD_LISTEN_FDS_START). */
const LISTEN_FDS_START = 3;
/** The name hsmintd.socket gives its socket (FileDescriptorName=). */
export const LISTEN_FD_NAME = 'hsmint';

type Environment = Record<string, string | undefined>;

/**
 * The socket systemd passed, or undefined when the daemon was not socket-activated (then it
 * listens on socket.path itself). As sd_listen_fds(3): only when LISTEN_PID is this process,
 * and the variables are removed so nothing this process starts inherits them. With several
 * descriptors, the one named `hsmint` is taken; anything else is a unit mistake, refused.
 */
export function takeListenFd(
  env: Environment = process.env,
  pid = process.pid,
): number | undefined {
  const listenPid = env['LISTEN_PID'];
  const listenFds = env['LISTEN_FDS'];
  const names = env['LISTEN_FDNAMES'];
  delete env['LISTEN_PID'];
  delete env['LISTEN_FDS'];
  delete env['LISTEN_FDNAMES'];
  if (listenPid === undefined || listenFds === undefined) return undefined;
  // Meant for another process (a wrapper that forgot to exec): not ours to take.
  if (!/^[1-9]\d*$/.test(listenPid) || Number(listenPid) !== pid) return undefined;
  if (!/^[1-9]\d*$/.test(listenFds) || Number(listenFds) > 64)
    throw new HsmintError('ERR_SOCKET_ACTIVATION', `LISTEN_FDS=${listenFds} is not a count`);
  const count = Number(listenFds);
  const fdNames = names === undefined ? [] : names.split(':');
  if (count === 1 && (fdNames.length === 0 || fdNames[0] === LISTEN_FD_NAME || names === ''))
    return LISTEN_FDS_START;
  const index = fdNames.indexOf(LISTEN_FD_NAME);
  if (index === -1 || index >= count)
    throw new HsmintError(
      'ERR_SOCKET_ACTIVATION',
      `systemd passed ${count} sockets and none is named ${LISTEN_FD_NAME} (FileDescriptorName=${LISTEN_FD_NAME} in hsmintd.socket)`,
    );
  return LISTEN_FDS_START + index;
}

/** Sends one datagram to the notify socket: the native addon's sdNotify. */
export type NotifySend = (path: string, text: string) => boolean;

/** The longest message sent; the addon's buffer is 4 KiB, and STATUS lines are short anyway. */
const MAX_NOTIFY_BYTES = 4000;

/**
 * sd_notify(3) for the daemon. Messages go from the main pid, so `NotifyAccess=main` is
 * enough. A notify failure is reported, never thrown: systemd not hearing a STATUS line must
 * not take the issuer down (a missed READY or WATCHDOG shows in systemd itself).
 */
export class Notifier {
  private readonly socket: string | undefined;
  private lastStatus: string | undefined;

  constructor(
    private readonly send: NotifySend,
    env: Environment = process.env,
    private readonly onError: (error: unknown) => void = () => undefined,
  ) {
    const socket = env['NOTIFY_SOCKET'];
    this.socket = socket === undefined || socket === '' ? undefined : socket;
  }

  /** Whether a supervisor listens (NOTIFY_SOCKET is set). */
  get enabled(): boolean {
    return this.socket !== undefined;
  }

  ready(status: string): void {
    this.lastStatus = oneLine(status);
    this.notify(`READY=1\nSTATUS=${this.lastStatus}`);
  }

  /** A STATUS= line for `systemctl status`; sent only when it changed. */
  status(text: string): void {
    const line = oneLine(text);
    if (line === this.lastStatus) return;
    this.lastStatus = line;
    this.notify(`STATUS=${line}`);
  }

  /** Around a reload: RELOADING=1 with the monotonic time systemd 253+ asks for. */
  reloading(): void {
    this.notify(`RELOADING=1\nMONOTONIC_USEC=${process.hrtime.bigint() / 1000n}`);
  }

  stopping(status: string): void {
    this.lastStatus = oneLine(status);
    this.notify(`STOPPING=1\nSTATUS=${this.lastStatus}`);
  }

  watchdog(): void {
    this.notify('WATCHDOG=1');
  }

  private notify(text: string): void {
    if (this.socket === undefined) return;
    try {
      if (Buffer.byteLength(text) > MAX_NOTIFY_BYTES)
        throw new RangeError('notify message too long');
      this.send(this.socket, text);
    } catch (error) {
      this.onError(error);
    }
  }
}

/** STATUS= is one line: newlines (from a kid or a reason) would start a new assignment. */
function oneLine(text: string): string {
  return text.replace(/[\r\n]+/g, ' ').slice(0, 512);
}

/**
 * The watchdog interval systemd asks for ($WATCHDOG_USEC), in ms, or undefined when none is
 * set or it is meant for another pid ($WATCHDOG_PID). Pings go at half of it.
 */
export function watchdogMs(env: Environment = process.env, pid = process.pid): number | undefined {
  const usec = env['WATCHDOG_USEC'];
  const watchdogPid = env['WATCHDOG_PID'];
  if (usec === undefined || !/^[1-9]\d*$/.test(usec)) return undefined;
  if (watchdogPid !== undefined && Number(watchdogPid) !== pid) return undefined;
  return Math.max(1, Math.floor(Number(usec) / 1000));
}

export interface WatchdogOptions {
  notifier: Notifier;
  /** The interval systemd expects pings within (ms); pings go at half of it. */
  intervalMs: number;
  /**
   * Resolves when the token answers. A probe still running at the next tick means the token
   * (or its module) is wedged: no ping, and systemd restarts the daemon after the interval.
   */
  probe: () => Promise<void>;
  /** Called at each tick, e.g. to refresh STATUS=. */
  onTick?: () => void;
}

/**
 * WATCHDOG=1 at half the interval while the event loop runs (the timer fires at all) and the
 * token answers (the last probe finished). A failed probe also withholds the ping: systemd's
 * restart is then the recovery.
 */
export class Watchdog {
  private timer: NodeJS.Timeout | undefined;
  private probing = false;
  private healthy = true;

  constructor(private readonly options: WatchdogOptions) {}

  start(): void {
    if (this.timer) return;
    this.timer = setInterval(
      () => this.tick(),
      Math.max(1, Math.floor(this.options.intervalMs / 2)),
    );
    this.timer.unref();
    this.startProbe();
  }

  stop(): void {
    clearInterval(this.timer);
    this.timer = undefined;
  }

  private tick(): void {
    this.options.onTick?.();
    // A probe that has not come back since the last tick: the token is wedged.
    if (!this.probing && this.healthy) this.options.notifier.watchdog();
    this.startProbe();
  }

  private startProbe(): void {
    if (this.probing) return;
    this.probing = true;
    this.options.probe().then(
      () => {
        this.healthy = true;
        this.probing = false;
      },
      () => {
        this.healthy = false;
        this.probing = false;
      },
    );
  }
}
