#!/bin/sh
# Installs hsmint from the bundle this script sits in (made by `npm run bundle`) on a host with
# no network: nothing is downloaded, and nothing is copied until every file matches SHA256SUMS.
# Run it as root. Running it again, or from a newer bundle, upgrades in place; an admin's
# /etc/hsmint/hsmint.yaml is never overwritten.
set -eu
umask 022

usage() {
	cat <<'EOF'
usage: install.sh [--prefix DIR] [--root DIR] [--node PATH] [--smartcard]

  --prefix DIR   where hsmint goes (default /opt/hsmint)
  --root DIR     install into DIR as if it were / (image builders, tests); runs nothing on the
                 host's systemd
  --node PATH    the node (20 or newer) the wrappers run (default: `node` on PATH)
  --smartcard    also install the drop-in that lets hsmintd reach pcscd (smart cards, YubiKeys)
EOF
}

say() { printf 'install.sh: %s\n' "$*" >&2; }
die() {
	say "$*"
	exit 1
}

root=
prefix=/opt/hsmint
node=
smartcard=no
while [ $# -gt 0 ]; do
	case $1 in
	--root | --prefix | --node)
		[ $# -ge 2 ] || die "$1 needs a value"
		case $1 in
		--root) root=$2 ;;
		--prefix) prefix=$2 ;;
		--node) node=$2 ;;
		esac
		shift 2
		;;
	--root=*) root=${1#*=} && shift ;;
	--prefix=*) prefix=${1#*=} && shift ;;
	--node=*) node=${1#*=} && shift ;;
	--smartcard) smartcard=yes && shift ;;
	-h | --help) usage && exit 0 ;;
	*) usage >&2 && die "unknown argument: $1" ;;
	esac
done

# These paths end up inside shell wrappers and unit files: keep them to characters that need
# no quoting anywhere.
plain_path() {
	case $1 in
	/*) ;;
	*) return 1 ;;
	esac
	case $1 in
	*[!A-Za-z0-9._/+-]*) return 1 ;;
	esac
}
plain_path "$prefix" || die "--prefix must be an absolute path of letters, digits and ._/+-: $prefix"
prefix=${prefix%/}
[ -n "$prefix" ] || die '--prefix cannot be /'
if [ -n "$root" ]; then
	[ -d "$root" ] || die "--root $root is not a directory"
	root=$(cd "$root" && pwd -P)
	[ "$root" != / ] || root=
fi

[ "$(id -u)" = 0 ] || die 'run me as root (sudo ./install.sh)'

here=$(cd "$(dirname "$0")" && pwd -P)
if [ ! -f "$here/SHA256SUMS" ] || [ ! -f "$here/BUILD-INFO" ]; then
	die "$here is not an hsmint bundle (no SHA256SUMS or BUILD-INFO); make one with npm run bundle"
fi
info() { sed -n "s/^$1=//p" "$here/BUILD-INFO"; }
version=$(info version)

# Node: found here, never fetched. The wrappers name it by absolute path.
if [ -z "$node" ]; then
	node=$(command -v node || true)
	[ -n "$node" ] || die "Node.js 20 or newer is not installed (no node on PATH). hsmint does not
download it. On the connected machine, fetch Node.js $(info node_major) for this host
($(info platform)-$(info arch)): the Debian/Ubuntu .deb from deb.nodesource.com, or the tarball
from https://nodejs.org/dist/ (unpack it into /usr/local); carry it across with this bundle,
install it, and run me again. Or point me at a node binary with --node PATH."
fi
plain_path "$node" || die "the node path must be absolute, of letters, digits and ._/+-: $node"
[ -x "$node" ] || die "$node is not executable"
node_ok=$("$node" -e 'const [major] = process.versions.node.split(".").map(Number);
console.log(major >= 20 ? "ok" : process.versions.node)') ||
	die "$node does not run"
[ "$node_ok" = ok ] ||
	die "hsmint needs Node.js 20 or newer; $node is $node_ok. Install Node.js $(info node_major) and run me again (or use --node PATH)"
# The native addons (pkcs11js and hsmint's own) are built for one platform and CPU.
target=$("$node" -p 'process.platform + "-" + process.arch')
[ "$target" = "$(info platform)-$(info arch)" ] ||
	die "this bundle is for $(info platform)-$(info arch), but $node runs on $target: make the bundle on a machine like this one"
[ -z "$root" ] || [ -x "$root$node" ] ||
	say "warning: the wrappers run $node, which $root does not have (use --node PATH)"

# The bundle itself: every file as SHA256SUMS lists it, and nothing that is not listed (a
# planted module would be loaded as surely as a changed one). Nothing is copied before this.
command -v sha256sum >/dev/null || die 'sha256sum (GNU coreutils) is needed to check the bundle'
say "checking $here against SHA256SUMS"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
trap 'exit 130' HUP INT TERM
if ! (cd "$here" && LC_ALL=C sha256sum --check --quiet --strict SHA256SUMS) >"$work/check" 2>&1; then
	sed 's/^/  /' "$work/check" >&2
	die 'the bundle does not match SHA256SUMS (listed above): do not install it; carry a fresh copy and compare its sha256 with the one printed where it was made'
fi
(cd "$here" && LC_ALL=C find . ! -type d ! -path ./SHA256SUMS | sed 's|^\./||' | LC_ALL=C sort) >"$work/found"
sed 's/^[0-9a-f]*  //' "$here/SHA256SUMS" | LC_ALL=C sort >"$work/listed"
LC_ALL=C comm -23 "$work/found" "$work/listed" >"$work/extra"
if [ -s "$work/extra" ]; then
	sed 's/^/  /' "$work/extra" >&2
	die 'these files are in the bundle but not in SHA256SUMS (listed above): do not install it'
fi
for unit in hsmintd.service hsmintd.socket sysusers.d/hsmint.conf tmpfiles.d/hsmint.conf hsmint.example.yaml; do
	[ -f "$here/systemd/$unit" ] || die "the bundle lacks systemd/$unit"
done

# The tree: copied next to the old one, then swapped in with two renames, so a failed copy
# leaves the installed version as it was. Restart hsmintd afterwards to run the new one.
dest=$root$prefix
mkdir -p "$(dirname "$dest")"
rm -rf "$dest.new" "$dest.old"
say "installing hsmint $version into $dest"
mkdir "$dest.new"
cp -R "$here/." "$dest.new/"
mkdir "$dest.new/bin"
for command in hsmintd:daemon hsmint:cli; do
	name=${command%%:*}
	cat >"$dest.new/bin/$name" <<EOF
#!/bin/sh
# Written by hsmint's install.sh (hsmint $version).
exec $node $prefix/dist/${command#*:}/main.js "\$@"
EOF
done
chown -R 0:0 "$dest.new"
chmod -R u=rwX,go=rX "$dest.new"
chmod 0755 "$dest.new/bin/hsmintd" "$dest.new/bin/hsmint" "$dest.new/install.sh"
if [ -e "$dest" ]; then
	mv "$dest" "$dest.old"
	mv "$dest.new" "$dest"
	rm -rf "$dest.old"
else
	mv "$dest.new" "$dest"
fi
mkdir -p "$root/usr/local/bin"
ln -sfn "$prefix/bin/hsmint" "$root/usr/local/bin/hsmint"

# systemd files. The units name /opt/hsmint; another --prefix is written into them.
put() { # put SOURCE DEST: a 0644 root file, replaced in one rename
	mkdir -p "$(dirname "$2")"
	sed "s|/opt/hsmint|$prefix|g" "$1" >"$2.tmp"
	chmod 0644 "$2.tmp"
	chown 0:0 "$2.tmp"
	mv -f "$2.tmp" "$2"
}
put "$here/systemd/hsmintd.service" "$root/etc/systemd/system/hsmintd.service"
put "$here/systemd/hsmintd.socket" "$root/etc/systemd/system/hsmintd.socket"
dropin=$root/etc/systemd/system/hsmintd.service.d/smartcard.conf
if [ "$smartcard" = yes ]; then
	[ -f "$here/systemd/hsmintd.service.d/smartcard.conf" ] ||
		die 'the bundle lacks systemd/hsmintd.service.d/smartcard.conf'
	put "$here/systemd/hsmintd.service.d/smartcard.conf" "$dropin"
elif [ -f "$dropin" ]; then
	say "left $dropin as it was (run me with --smartcard to update it, or remove it)"
fi
put "$here/systemd/sysusers.d/hsmint.conf" "$root/usr/lib/sysusers.d/hsmint.conf"
put "$here/systemd/tmpfiles.d/hsmint.conf" "$root/usr/lib/tmpfiles.d/hsmint.conf"

# By name, not path: found in /etc/, /run/ and /usr/lib/ (an admin's override in /etc wins),
# and with --root, in that root; users, groups and directories are made there too.
if command -v systemd-sysusers >/dev/null; then
	systemd-sysusers ${root:+"--root=$root"} hsmint.conf
else
	say 'no systemd-sysusers here: create the hsmint system user and group yourself'
fi

# The group hsmintd runs as, from the root being installed into.
if [ -n "$root" ]; then
	gid=$(awk -F: '$1 == "hsmint" { print $3 }' "$root/etc/group" 2>/dev/null || true)
else
	gid=$(getent group hsmint | cut -d: -f3 || true)
fi

# /etc/hsmint: readable by the daemon's group, by nobody else. The PIN goes in here too, but
# root-only: systemd reads it for the daemon (LoadCredential).
mkdir -p "$root/etc/hsmint"
chmod 0750 "$root/etc/hsmint"
chown "0:${gid:-0}" "$root/etc/hsmint"
config=$root/etc/hsmint/hsmint.yaml
if [ -e "$config" ]; then
	say "kept $config (the example for this version: $prefix/systemd/hsmint.example.yaml)"
else
	cp "$here/systemd/hsmint.example.yaml" "$config.tmp"
	chmod 0640 "$config.tmp"
	chown "0:${gid:-0}" "$config.tmp"
	mv "$config.tmp" "$config"
	say "wrote $config from the example"
fi
[ -n "$gid" ] || say 'no hsmint group yet: give /etc/hsmint and hsmint.yaml to group hsmint once it exists'

if command -v systemd-tmpfiles >/dev/null; then
	systemd-tmpfiles --create ${root:+"--root=$root"} hsmint.conf
else
	say 'no systemd-tmpfiles here: create the directories in /usr/lib/tmpfiles.d/hsmint.conf yourself'
fi
if [ -z "$root" ] && [ -d /run/systemd/system ]; then
	systemctl daemon-reload
fi

say "hsmint $version is installed in $dest"
check='hsmint status'
[ ! -f "$dest/dist/cli/commands/doctor.js" ] || check='hsmint doctor && hsmint status'
cat <<EOF

Next steps on a first install (after an upgrade: systemctl restart hsmintd.service):
  1. Put the token's user PIN in /etc/hsmint/pin, readable by root alone:
       install -m 0600 -o root -g root /dev/null /etc/hsmint/pin
       \$EDITOR /etc/hsmint/pin
  2. Edit /etc/hsmint/hsmint.yaml: issuer, hsm (profile, module, token), keys, policy.
  3. Start it:
       systemctl enable --now hsmintd.socket hsmintd.service
  4. Check it:
       $check
EOF
