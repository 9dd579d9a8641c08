"""tools/sieve_copy.py against real Dovecot Pigeonhole nodes: a user's Sieve
scripts copied from a node of one island to a node of the other over
ManageSieve, logged in as the nodes' master user (both login styles)."""
import os
import sys
import unittest

from support import Lab

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tools"))
import sieve_copy as sc  # noqa: E402

from lab.dovecot import MASTER_PASSWORD, MASTER_USER  # noqa: E402

LAB = None
VACATION = (b'require ["vacation"];\r\nvacation :days 7 "Away until Monday.\r\n'
            b'Cheers";\r\n')
LISTS = b'require ["fileinto"];\r\nif header :contains "list-id" "dev" {\r\n fileinto "Dev";\r\n}\r\n'


def setUpModule():
    global LAB
    LAB = Lab(sieve=True)
    unittest.addModuleCleanup(LAB.close)
    LAB.start()


def client(node: str, user: str) -> sc.SieveClient:
    n = LAB.node(node)
    c = sc.SieveClient(n.host, n.ports["sieve"])
    c.log_in(user, MASTER_USER, MASTER_PASSWORD)
    return c


class SieveCopy(unittest.TestCase):
    def test_scripts_and_the_active_one_arrive_and_a_second_copy_changes_nothing(self):
        user = "alice@example.org"
        src = client("a-left", user)
        self.addCleanup(src.close)
        src.put_script("vacation", VACATION)
        src.put_script("lists", LISTS)
        src.set_active("vacation")
        dst = client("b-left", user)
        self.addCleanup(dst.close)
        self.assertTrue(sc.same_scripts(src, dst))  # differences before
        done = sc.copy_scripts(src, dst)
        self.assertEqual(sorted(done["copied"]), ["lists", "vacation"])
        self.assertEqual(done["active"], "vacation")
        self.assertEqual(sc.same_scripts(src, dst), [])
        # On disk, in island b's store, active.
        home = os.path.join(LAB.store("b"), "example.org", "alice")
        with open(os.path.join(home, "sieve", "vacation.sieve"), "rb") as f:
            self.assertEqual(f.read().replace(b"\r\n", b"\n"), VACATION.replace(b"\r\n", b"\n"))
        self.assertEqual(os.path.basename(os.readlink(os.path.join(home, ".dovecot.sieve"))),
                         "vacation.sieve")
        again = sc.copy_scripts(src, dst)
        self.assertEqual(again["copied"], [])
        self.assertEqual(sorted(again["unchanged"]), ["lists", "vacation"])
        # A change on the source and a new active script are copied.
        src.put_script("lists", LISTS.replace(b"Dev", b"Development"))
        src.set_active("lists")
        self.assertEqual(len(sc.same_scripts(src, dst)), 2)
        third = sc.copy_scripts(src, dst)
        self.assertEqual(third["copied"], ["lists"])
        self.assertEqual(sc.same_scripts(src, dst), [])
        _, active = dst.list_scripts()
        self.assertEqual(active, "lists")

    def test_the_sasl_login_style_and_a_refused_master_login(self):
        n = LAB.node("a-right")
        c = sc.SieveClient(n.host, n.ports["sieve"])
        self.addCleanup(c.close)
        with self.assertRaises(sc.SieveError):
            c.log_in("bob@example.org", MASTER_USER, "wrong")
        c.log_in("bob@example.org", MASTER_USER, MASTER_PASSWORD, style="sasl")
        self.assertEqual(c.list_scripts(), ([], None))


if __name__ == "__main__":
    unittest.main(verbosity=2)
