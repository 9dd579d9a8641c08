"""The Debian package, end to end, on this machine: build it
(deploy/build-deb.sh, lintian included), install it with apt as an operator
would (`apt-get install ./isthmus_*.deb`), check what it put where, verify
its systemd units (systemd-analyze verify; security, score printed), start
the installed daemon with the installed config the way isthmus.service
would (as _isthmus, CAP_NET_BIND_SERVICE only, NOTIFY_SOCKET; no systemd
runs here), log in through it over IMAP (143) and POP3 (110) to lab Dovecot
nodes on the ports the installed config names, reload it with the unit's
ExecReload= command, stop it, then purge the package and check that nothing
of it is left.

Installs into the real system: the test holds /run/lock/isthmus-package-test
so two checkouts on one machine take turns, and purges a previous isthmus
package first. ISTHMUS_DEB=PATH uses that .deb instead of building one.
"""
import fcntl
import grp
import imaplib
import os
import pathlib
import poplib
import pwd
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import unittest

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
from lab.cluster import DEMO_NODE_PORTS, PASSWORD, Lab  # noqa: E402
from lab.dovecot import make_message  # noqa: E402

UNIT_DIR = pathlib.Path("/lib/systemd/system")
APT = ["apt-get", "-o", "DPkg::Lock::Timeout=600", "-y", "--no-install-recommends"]
# What the package must install (and purge must remove).
INSTALLED = [
    "/usr/sbin/isthmus", "/usr/bin/isthmusctl", "/usr/lib/isthmus/isthmusctl",
    "/usr/lib/isthmus/isthmus-copy",
    "/usr/lib/isthmus/isthmus-move",
    "/usr/lib/isthmus/hooks/move-service-address",
    "/etc/isthmus/isthmus.json", "/etc/isthmus/users.map",
    "/etc/isthmus/isthmusctl.json", "/usr/share/isthmus/sql/calmail-schema.sql",
    "/usr/share/isthmus/sql/role-store.sql", "/usr/share/isthmus/ldap/isthmus.schema",
    "/usr/share/isthmus/grafana/isthmus.json", "/usr/share/isthmus/prometheus/alerts.yml",
    "/usr/share/man/man8/isthmus.8.gz", "/usr/share/man/man5/isthmus.json.5.gz",
    "/usr/share/man/man8/isthmusctl.8.gz", "/lib/systemd/system/isthmus.service",
    "/lib/systemd/system/isthmus@.service", "/usr/lib/tmpfiles.d/isthmus.conf",
]
CONFFILES = {"/etc/isthmus/isthmus.json", "/etc/isthmus/users.map", "/etc/isthmus/isthmusctl.json"}


def sh(argv, check=True, timeout=600, **kw):
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise AssertionError(f"{shlex.join(argv)} exited {r.returncode}:\n{r.stdout}\n{r.stderr}")
    return r


def installed():
    r = sh(["dpkg-query", "-W", "-f=${Status}", "isthmus"], check=False)
    return r.returncode == 0 and "installed" in r.stdout and "not-installed" not in r.stdout


def unit_settings(path, instance=None):
    """KEY -> list of values of a unit file's [Service] section (%i: INSTANCE)."""
    settings = {}
    section = None
    for line in pathlib.Path(path).read_text().splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            if instance is not None:
                value = value.replace("%i", instance)
            settings.setdefault(key, []).append(value)
    return settings


class Notify:
    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        os.chmod(path, 0o666)  # the daemon runs as _isthmus

    def wait_for(self, key, timeout=20.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                message = dict(l.split("=", 1) for l in self.sock.recv(4096).decode().split("\n") if l)
            except socket.timeout:
                break
            if key in message:
                return message
        raise AssertionError(f"no {key}=1 from the daemon within {timeout}s")


class Package(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if os.geteuid() != 0:
            raise unittest.SkipTest("installs a package: needs root")
        cls.lock = open("/run/lock/isthmus-package-test", "w")
        fcntl.flock(cls.lock, fcntl.LOCK_EX)
        cls.addClassCleanup(cls.lock.close)
        cls.work = tempfile.mkdtemp(prefix="isthmus-test-")
        os.chmod(cls.work, 0o755)
        cls.addClassCleanup(shutil.rmtree, cls.work, True)
        deb = os.environ.get("ISTHMUS_DEB")
        if not deb:
            started = time.monotonic()
            r = sh([str(REPO / "deploy" / "build-deb.sh"), "--no-dbgsym"], timeout=1500)
            deb = r.stdout.strip().splitlines()[-1]
            print(r.stderr.strip())
            print(f"package: built and linted in {time.monotonic() - started:.1f}s")
        cls.deb = deb
        print(f"package: {deb}, {os.path.getsize(deb) / 1024:.0f} KiB")
        if installed():
            print("package: purging an isthmus package installed before this test")
            sh(APT + ["purge", "isthmus"])

    def start_as_unit(self, unit, env, log_path):
        """The unit's ExecStart= as systemd would run it: its User= and
        Group=, its one ambient capability and nothing more, no new
        privileges, its UMask=, in /."""
        cap = unit["AmbientCapabilities"][0].lower().removeprefix("cap_")
        argv = ["setpriv", f"--reuid={unit['User'][0]}", f"--regid={unit['Group'][0]}",
                "--init-groups", f"--inh-caps=-all,+{cap}", f"--ambient-caps=-all,+{cap}",
                f"--bounding-set=-all,+{cap}", "--no-new-privs"] + shlex.split(unit["ExecStart"][0])
        umask = int(unit["UMask"][0], 8)
        log = open(log_path, "w")
        self.addCleanup(log.close)
        daemon = subprocess.Popen(argv, env=env, cwd="/", stdout=log, stderr=subprocess.STDOUT,
                                  preexec_fn=lambda: os.umask(umask))

        def stop_daemon():
            if daemon.poll() is None:
                daemon.kill()
                daemon.wait()
        self.addCleanup(stop_daemon)
        return daemon

    def reload_as_unit(self, unit, env, check=True):
        """The unit's ExecReload=, as its user."""
        return sh(["setpriv", f"--reuid={unit['User'][0]}", f"--regid={unit['Group'][0]}",
                   "--init-groups"] + shlex.split(unit["ExecReload"][0]), env=env, check=check)

    def test_install_run_purge(self):
        started = time.monotonic()
        # -- install, as the README says
        self.addCleanup(lambda: installed() and sh(APT + ["purge", "isthmus"], check=False))
        sh(APT + ["install", os.path.abspath(self.deb)], env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
        self.assertTrue(installed())
        for path in INSTALLED:
            self.assertTrue(os.path.lexists(path), f"{path} not installed")
        conffiles = sh(["dpkg-query", "-W", "-f=${Conffiles}", "isthmus"]).stdout
        for path in CONFFILES:
            self.assertIn(path + " ", conffiles, f"{path} is not a conffile")
        user = pwd.getpwnam("_isthmus")
        self.assertLess(user.pw_uid, 1000, "not a system user")
        self.assertEqual(user.pw_dir, "/var/lib/isthmus")
        self.assertIn("nologin", user.pw_shell)
        self.assertEqual(grp.getgrgid(user.pw_gid).gr_name, "_isthmus")
        for path in ("/var/lib/isthmus", "/run/isthmus"):
            st = os.stat(path)
            self.assertEqual((st.st_uid, st.st_gid, st.st_mode & 0o7777),
                             (user.pw_uid, user.pw_gid, 0o750), path)
        self.assertEqual(os.stat("/usr/sbin/isthmus").st_mode & 0o7777, 0o755)
        sh(["/usr/sbin/isthmus", "--check-config", "/etc/isthmus/isthmus.json"])
        for page in ("isthmus", "isthmus.json", "isthmusctl"):
            sh(["man", "-w", page])
        # The mover's copy engine runs (its libraries are the package's
        # dependencies).
        self.assertIn("one copy pass", sh(["/usr/lib/isthmus/isthmus-copy", "--help"]).stdout)
        self.assertIn("journaled and resumable",
                      sh(["/usr/lib/isthmus/isthmus-move", "--help"]).stdout)
        version = sh(["/usr/sbin/isthmus", "--version"]).stdout.split()[-1]
        self.assertIn(f"isthmus_{version}_", os.path.basename(self.deb))

        # -- the units, now that the programs they name exist
        unit_copy = os.path.join(self.work, "isthmus@ci.service")
        shutil.copy(UNIT_DIR / "isthmus@.service", unit_copy)
        for unit in (str(UNIT_DIR / "isthmus.service"), unit_copy):
            r = sh(["systemd-analyze", "verify", unit], check=False)
            self.assertEqual((r.returncode, r.stdout + r.stderr), (0, ""), f"verify {unit}")
            r = sh(["systemd-analyze", "security", "--offline=yes", "--threshold=20", unit],
                   check=False)
            score = re.search(r"Overall exposure level for \S+: (\S+ \S+)", r.stdout)
            print(f"package: systemd-analyze security {os.path.basename(unit)}: "
                  f"{score.group(1) if score else r.stdout[-300:]}")
            self.assertEqual(r.returncode, 0, "exposure above 2.0:\n" + r.stdout)
        # verify looked the Documentation= pages up with man, and man-db kept
        # formatted copies in its cache: ours, not the package's.
        for cached in pathlib.Path("/var/cache/man").glob("cat*/isthmus*"):
            cached.unlink()

        # -- lab nodes where the installed config expects them
        for ports in DEMO_NODE_PORTS.values():
            for port in list(ports.values()) + [143, 110]:
                with socket.socket() as s:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    try:
                        s.bind(("127.0.0.1", port))
                    except OSError:
                        self.fail(f"port {port} is taken: the installed config needs it")
        lab = Lab(DEMO_NODE_PORTS)
        self.addCleanup(lab.close)
        lab.start()
        lab.put_message("alice@example.org", make_message("from the package test", "hello\n"))

        # -- start it as isthmus.service would
        unit = unit_settings(UNIT_DIR / "isthmus.service")
        self.assertEqual(unit["Type"], ["notify"])
        self.assertEqual(unit["AmbientCapabilities"], ["CAP_NET_BIND_SERVICE"])
        notify = Notify(os.path.join(self.work, "notify"))
        self.addCleanup(notify.sock.close)
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
               "NOTIFY_SOCKET": os.path.join(self.work, "notify")}
        log_path = os.path.join(self.work, "isthmus.log")
        daemon = self.start_as_unit(unit, env, log_path)
        ready = notify.wait_for("READY")
        self.assertEqual(ready["MAINPID"], str(daemon.pid))
        status = pathlib.Path(f"/proc/{daemon.pid}/status").read_text()
        self.assertRegex(status, rf"Uid:\s+{user.pw_uid}\s+{user.pw_uid}\s")
        self.assertRegex(status, r"CapEff:\s+0000000000000400\n", "not CAP_NET_BIND_SERVICE alone")

        # -- through it to the nodes, on the standard ports
        imap = imaplib.IMAP4("127.0.0.1", 143, timeout=15)
        imap.login("alice", PASSWORD)  # default_domain example.org
        imap.select("INBOX")
        typ, data = imap.fetch("1", "(BODY[HEADER.FIELDS (SUBJECT)])")
        self.assertEqual(typ, "OK")
        self.assertIn(b"from the package test", data[0][1])
        imap.logout()
        pop = poplib.POP3("127.0.0.1", 110, timeout=15)
        pop.user("bob@example.org")
        pop.pass_(PASSWORD)
        pop.stat()
        pop.quit()
        deadline = time.monotonic() + 10  # Dovecot writes its log line a little later
        while not any(l.get("user") == "alice@example.org" and l["ok"]
                      for name in ("a-left", "a-right") for l in lab.node(name).logins()):
            self.assertLess(time.monotonic(), deadline, "alice's login did not reach island a")
            time.sleep(0.1)

        # -- the operator's tools, as installed
        r = sh(["isthmusctl", "status"])
        self.assertIn(version, r.stdout)
        r = sh(["isthmusctl", "metrics"])
        self.assertRegex(r.stdout, r'isthmus_logins_total\{protocol="imap",result="ok"\} 1\n')
        self.assertRegex(r.stdout, r'isthmus_logins_total\{protocol="pop3",result="ok"\} 1\n')
        # systemctl reload runs ExecReload= as the unit's user: it must succeed
        # and wait for the reload.
        self.reload_as_unit(unit, env)
        self.assertEqual(notify.wait_for("RELOADING")["RELOADING"], "1")
        self.assertIn("generation 2 is live", notify.wait_for("READY").get("STATUS", ""))
        # A broken config: `systemctl reload` fails and says why; the old
        # config keeps serving.
        config = pathlib.Path("/etc/isthmus/isthmus.json")
        original = config.read_text()
        config.write_text(original.replace('"islands"', '"islandz"', 1))
        r = self.reload_as_unit(unit, env, check=False)
        self.assertNotEqual(r.returncode, 0, r.stdout)
        self.assertIn("islandz", r.stderr)
        self.assertIn("reload failed", notify.wait_for("READY").get("STATUS", ""))
        config.write_text(original)
        imap = imaplib.IMAP4("127.0.0.1", 143, timeout=15)
        imap.login("carol@example.org", PASSWORD)
        imap.logout()
        daemon.terminate()
        notify.wait_for("STOPPING")
        self.assertEqual(daemon.wait(timeout=60), 0)
        self.assertIn("ready", pathlib.Path(log_path).read_text())

        # -- one instance of isthmus@.service: isthmus@ci runs /etc/isthmus/ci.json,
        # whose admin socket is the one the template's ExecReload= uses.
        template = unit_settings(UNIT_DIR / "isthmus@.service", instance="ci")
        self.assertEqual(template["ExecStart"], ["/usr/sbin/isthmus --config /etc/isthmus/ci.json"])
        instance_config = pathlib.Path("/etc/isthmus/ci.json")
        self.addCleanup(lambda: instance_config.unlink(missing_ok=True))
        instance_config.write_text(original.replace('"/run/isthmus/admin.sock"',
                                                    '"/run/isthmus/ci/admin.sock"'))
        runtime_dir = pathlib.Path("/run", template["RuntimeDirectory"][0])  # as systemd makes it
        runtime_dir.mkdir(mode=0o750)
        self.addCleanup(shutil.rmtree, runtime_dir, True)
        os.chown(runtime_dir, user.pw_uid, user.pw_gid)
        instance = self.start_as_unit(template, env, os.path.join(self.work, "isthmus-ci.log"))
        notify.wait_for("READY")
        imap = imaplib.IMAP4("127.0.0.1", 143, timeout=15)
        imap.login("bob@example.org", PASSWORD)
        imap.logout()
        self.reload_as_unit(template, env)
        notify.wait_for("READY")
        instance.terminate()
        self.assertEqual(instance.wait(timeout=60), 0)
        instance_config.unlink()
        shutil.rmtree(runtime_dir)

        # -- remove, then purge: nothing left but the system user
        sh(APT + ["remove", "isthmus"])
        self.assertFalse(os.path.exists("/usr/sbin/isthmus"))
        self.assertTrue(os.path.exists("/etc/isthmus/isthmus.json"), "remove must keep conffiles")
        sh(APT + ["purge", "isthmus"])
        self.assertFalse(installed())
        for path in INSTALLED + ["/etc/isthmus", "/var/lib/isthmus", "/run/isthmus",
                                 "/usr/lib/isthmus", "/usr/share/isthmus"]:
            self.assertFalse(os.path.lexists(path), f"{path} left after purge")
        left = sh(["find", "/etc", "/usr", "/var", "/run", "/lib", "-xdev", "-name", "*isthmus*",
                   "-not", "-path", "/var/tmp/*", "-not", "-path", "/run/lock/isthmus-package-test"],
                  check=False).stdout.split()
        self.assertEqual(left, [], "left after purge")
        # Debian leaves system users in place (files they owned may remain).
        pwd.getpwnam("_isthmus")
        print(f"package: install, run, reload, stop, purge in {time.monotonic() - started:.1f}s")


if __name__ == "__main__":
    unittest.main()
