// hsmint's native seam: the two things Node cannot do on a Unix socket by itself.
//   peerCredentials(fd)  -> { pid, uid, gid } of the process at the other end (SO_PEERCRED)
//   sdNotify(path, text) -> sends one datagram to systemd's $NOTIFY_SOCKET
//   pidfdOpen(pid)       -> a pidfd for the process (Linux >= 5.3), to learn when it exits
//   pidfdExited(fd)      -> whether the process behind a pidfd has exited (a poll, no wait)
//   lockExclusive(path)  -> an fd holding flock(LOCK_EX) on path (created 0600), or EWOULDBLOCK
//   peerPidfd(fd)        -> a pidfd for the very process that connected (SO_PEERPIDFD, Linux >= 6.5)
#define _GNU_SOURCE
#include <errno.h>
#include <node_api.h>
#include <stddef.h>
#include <stdio.h>
#include <poll.h>
#include <sys/file.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <fcntl.h>
#include <unistd.h>

#ifndef SO_PEERPIDFD
#define SO_PEERPIDFD 77 /* Linux 6.5; older libc headers lack it */
#endif

static napi_value throw_errno(napi_env env, const char *call, int error) {
  char message[160];
  snprintf(message, sizeof message, "%s failed: %s", call, strerror(error));
  napi_throw_error(env, "ERR_NATIVE", message);
  return NULL;
}

static napi_value peer_credentials(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  int32_t fd;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 1 ||
      napi_get_value_int32(env, argv[0], &fd) != napi_ok || fd < 0) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "peerCredentials(fd): fd must be a non-negative integer");
    return NULL;
  }
  struct ucred credentials;
  socklen_t length = sizeof credentials;
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &credentials, &length) != 0) {
    return throw_errno(env, "getsockopt(SO_PEERCRED)", errno);
  }
  if (length != sizeof credentials) return throw_errno(env, "getsockopt(SO_PEERCRED)", EPROTO);
  napi_value result, pid, uid, gid;
  napi_create_object(env, &result);
  napi_create_int32(env, credentials.pid, &pid);
  napi_create_uint32(env, credentials.uid, &uid);
  napi_create_uint32(env, credentials.gid, &gid);
  napi_set_named_property(env, result, "pid", pid);
  napi_set_named_property(env, result, "uid", uid);
  napi_set_named_property(env, result, "gid", gid);
  return result;
}

static napi_value sd_notify(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  char path[sizeof(((struct sockaddr_un *)0)->sun_path) + 1];
  char text[4096];
  size_t path_length, text_length;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 2 ||
      napi_get_value_string_utf8(env, argv[0], path, sizeof path, &path_length) != napi_ok ||
      napi_get_value_string_utf8(env, argv[1], text, sizeof text, &text_length) != napi_ok) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "sdNotify(path, text): two strings");
    return NULL;
  }
  struct sockaddr_un address;
  memset(&address, 0, sizeof address);
  address.sun_family = AF_UNIX;
  if (path_length == 0 || path_length >= sizeof address.sun_path) {
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "sdNotify: bad socket path length");
    return NULL;
  }
  memcpy(address.sun_path, path, path_length);
  // systemd may hand out an abstract socket, written "@name": its first byte is NUL.
  if (path[0] == '@') address.sun_path[0] = '\0';
  socklen_t address_length = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + path_length);
  int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return throw_errno(env, "socket(AF_UNIX, SOCK_DGRAM)", errno);
  ssize_t sent = sendto(fd, text, text_length, MSG_NOSIGNAL, (struct sockaddr *)&address, address_length);
  int error = errno;
  close(fd);
  if (sent < 0) return throw_errno(env, "sendto($NOTIFY_SOCKET)", error);
  napi_value result;
  napi_get_boolean(env, (size_t)sent == text_length, &result);
  return result;
}

static int32_t int32_argument(napi_env env, napi_callback_info info, const char *usage) {
  size_t argc = 1;
  napi_value argv[1];
  int32_t value;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 1 ||
      napi_get_value_int32(env, argv[0], &value) != napi_ok || value < 0) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", usage);
    return -1;
  }
  return value;
}

static napi_value pidfd_open(napi_env env, napi_callback_info info) {
  int32_t pid = int32_argument(env, info, "pidfdOpen(pid): pid must be a positive integer");
  if (pid <= 0) {
    if (pid == 0) napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "pidfdOpen(pid): pid 0");
    return NULL;
  }
#ifdef SYS_pidfd_open
  // A pidfd is close-on-exec by default.
  long fd = syscall(SYS_pidfd_open, (pid_t)pid, 0);
  if (fd < 0) return throw_errno(env, "pidfd_open", errno);
  napi_value result;
  napi_create_int32(env, (int32_t)fd, &result);
  return result;
#else
  return throw_errno(env, "pidfd_open", ENOSYS);
#endif
}

static napi_value pidfd_exited(napi_env env, napi_callback_info info) {
  int32_t fd = int32_argument(env, info, "pidfdExited(fd): fd must be a non-negative integer");
  if (fd < 0) return NULL;
  // A pidfd polls readable once its process has exited, zombie or reaped.
  struct pollfd entry = {.fd = fd, .events = POLLIN, .revents = 0};
  int ready;
  do {
    ready = poll(&entry, 1, 0);
  } while (ready < 0 && errno == EINTR);
  if (ready < 0) return throw_errno(env, "poll(pidfd)", errno);
  napi_value result;
  napi_get_boolean(env, ready > 0 && (entry.revents & (POLLIN | POLLHUP | POLLERR | POLLNVAL)) != 0, &result);
  return result;
}

static napi_value peer_pidfd(napi_env env, napi_callback_info info) {
  int32_t fd = int32_argument(env, info, "peerPidfd(fd): fd must be a non-negative integer");
  if (fd < 0) return NULL;
  // Taken by the kernel at connect(): it names the process that connected, never a later
  // owner of its pid. ENOPROTOOPT before Linux 6.5; an error too once that process is gone.
  int pidfd = -1;
  socklen_t length = sizeof pidfd;
  if (getsockopt(fd, SOL_SOCKET, SO_PEERPIDFD, &pidfd, &length) != 0) {
    napi_value error, code, message;
    char text[160];
    int number = errno;
    snprintf(text, sizeof text, "getsockopt(SO_PEERPIDFD) failed: %s", strerror(number));
    napi_create_string_utf8(env, text, NAPI_AUTO_LENGTH, &message);
    napi_create_error(env, NULL, message, &error);
    napi_create_string_utf8(env, number == ENOPROTOOPT ? "ENOPROTOOPT" : "ERR_NATIVE", NAPI_AUTO_LENGTH, &code);
    napi_set_named_property(env, error, "code", code);
    napi_throw(env, error);
    return NULL;
  }
  fcntl(pidfd, F_SETFD, FD_CLOEXEC);
  napi_value result;
  napi_create_int32(env, pidfd, &result);
  return result;
}

static napi_value lock_exclusive(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  char path[4096];
  size_t length;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 1 ||
      napi_get_value_string_utf8(env, argv[0], path, sizeof path, &length) != napi_ok ||
      length == 0 || length >= sizeof path - 1) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "lockExclusive(path): a path");
    return NULL;
  }
  int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) return throw_errno(env, "open(lock file)", errno);
  // Held until the process ends, however it ends: the kernel drops a flock with its last fd.
  if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
    int number = errno;
    close(fd);
    if (number == EWOULDBLOCK) {
      napi_value error, code, message;
      napi_create_string_utf8(env, "another process holds the lock", NAPI_AUTO_LENGTH, &message);
      napi_create_error(env, NULL, message, &error);
      napi_create_string_utf8(env, "EWOULDBLOCK", NAPI_AUTO_LENGTH, &code);
      napi_set_named_property(env, error, "code", code);
      napi_throw(env, error);
      return NULL;
    }
    return throw_errno(env, "flock", number);
  }
  napi_value result;
  napi_create_int32(env, fd, &result);
  return result;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor properties[] = {
      {"peerCredentials", NULL, peer_credentials, NULL, NULL, NULL, napi_enumerable, NULL},
      {"sdNotify", NULL, sd_notify, NULL, NULL, NULL, napi_enumerable, NULL},
      {"pidfdOpen", NULL, pidfd_open, NULL, NULL, NULL, napi_enumerable, NULL},
      {"pidfdExited", NULL, pidfd_exited, NULL, NULL, NULL, napi_enumerable, NULL},
      {"peerPidfd", NULL, peer_pidfd, NULL, NULL, NULL, napi_enumerable, NULL},
      {"lockExclusive", NULL, lock_exclusive, NULL, NULL, NULL, napi_enumerable, NULL},
  };
  napi_define_properties(env, exports, sizeof properties / sizeof properties[0], properties);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
