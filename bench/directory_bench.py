#!/usr/bin/env python3
"""Directory benchmark: Isthmus' LDAP and SQL directories against a real
slapd and a real MariaDB (the test lab's, seeded with the lab's users),
each next to a reference measured in the same run (see
bench/directory_bench.cpp for what the references are).

    bench/directory_bench.py --bench build/ci/bin/isthmus-directory-bench

Prints, per directory: lookups/s uncached (Isthmus with N in flight vs the
bare client library, synchronous, one connection) and the cost of a cache
hit (vs a mutex + hash probe + copy), with their ratios.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from lab import directory_data as dd  # noqa: E402
from lab import procs  # noqa: E402
from lab.mariadb import MariaDB  # noqa: E402
from lab.slapd import Slapd  # noqa: E402

ISLANDS = [{"name": name, "nodes": [{"name": f"{name}-left", "host": "127.0.0.1",
                                       "ports": {"imap": 1}}]} for name in ("a", "b")]


def config_for(directory: dict) -> dict:
    return {"listeners": [{"name": "imap", "protocol": "imap", "address": "127.0.0.1",
                           "port": 0}],
            "islands": ISLANDS, "directory": directory}


def run(bench: str, config: dict, users_path: str, work: str, name: str, args) -> dict:
    path = os.path.join(work, f"{name}.json")
    with open(path, "w") as f:
        json.dump(config, f)
    out = subprocess.run([bench, "--config", path, "--users", users_path,
                          "--concurrency", str(args.concurrency), "--seconds", str(args.seconds),
                          "--hits", str(args.hits)],
                         check=True, capture_output=True, text=True, timeout=300)
    return json.loads(out.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bench", default="build/ci/bin/isthmus-directory-bench")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--hits", type=int, default=2000000)
    parser.add_argument("--pool", type=int, default=4)
    parser.add_argument("--latency-ms", type=float, default=5.0,
                        help="round trip added to the far LDAP server")
    parser.add_argument("--far-concurrency", type=int, default=200,
                        help="lookups in flight against the far server")
    parser.add_argument("--json", help="write all figures here")
    args = parser.parse_args()

    results = {}
    with tempfile.TemporaryDirectory(prefix="isthmus-dirbench-") as work:
        users_path = os.path.join(work, "users.txt")
        with open(users_path, "w") as f:
            for u in dd.USERS:
                f.write(u.login + "\n")
        slapd = Slapd(os.path.join(work, "slapd"), procs.free_port(), log_level="0")
        db = MariaDB(os.path.join(work, "mariadb"), procs.free_port())
        try:
            slapd.start()
            db.start()
            pw = os.path.join(work, "ldap.pw")
            with open(pw, "w") as f:
                f.write(dd.SERVICE_PASSWORD)
            ldap = {"type": "ldap", "ldap": {
                "uris": [slapd.url], "base": dd.PEOPLE_DN, "bind_dn": dd.SERVICE_DN,
                "bind_password_file": pw, "pool": args.pool}}
            sql = {"type": "sql", "sql": {
                "servers": [f"127.0.0.1:{db.port}"], "database": dd.SQL_DATABASE,
                "user": dd.SQL_USER, "password_file": db.password_path, "pool": args.pool}}
            results["ldap"] = run(args.bench, config_for(ldap), users_path, work, "ldap", args)
            # A directory some milliseconds away (issue 12): cold lookups with
            # many in flight, straight and through a gate that holds every
            # chunk --latency-ms/2 each way, in the same run.
            far = argparse.Namespace(**dict(vars(args), concurrency=args.far_concurrency))
            from lab.gate import Gate  # noqa: E402
            with Gate(0, slapd.port, latency=args.latency_ms / 2000.0, name="ldap-far") as gate:
                far_ldap = json.loads(json.dumps(ldap))
                far_ldap["ldap"]["uris"] = [f"ldap://127.0.0.1:{gate.port}/"]
                near = run(args.bench, config_for(ldap), users_path, work, "ldap-near", far)
                away = run(args.bench, config_for(far_ldap), users_path, work, "ldap-far", far)
            results["ldap_latency"] = {
                "latency_ms": args.latency_ms, "concurrency": args.far_concurrency,
                "near_lookups_per_s": near["uncached"]["isthmus_lookups_per_s"],
                "far_lookups_per_s": away["uncached"]["isthmus_lookups_per_s"],
                "ratio": away["uncached"]["isthmus_lookups_per_s"] /
                         max(near["uncached"]["isthmus_lookups_per_s"], 1e-9)}
            results["sql"] = run(args.bench, config_for(sql), users_path, work, "sql", args)
        finally:
            slapd.stop()
            db.stop()

    print(f"{'directory':10} {'lookups/s':>10} {'reference':>10} {'ratio':>6}   "
          f"{'hit ns':>7} {'floor ns':>8} {'ratio':>6}")
    for name, r in results.items():
        if name == "ldap_latency":
            continue
        u, h = r["uncached"], r["cache_hit"]
        print(f"{name:10} {u['isthmus_lookups_per_s']:10.0f} {u['reference_lookups_per_s']:10.0f} "
              f"{u['ratio']:6.2f}   {h['isthmus_ns']:7.0f} {h['reference_ns']:8.0f} "
              f"{h['ratio']:6.2f}")
    far = results["ldap_latency"]
    print(f"\nldap, {far['concurrency']} cold lookups in flight: {far['near_lookups_per_s']:.0f}/s "
          f"on loopback, {far['far_lookups_per_s']:.0f}/s with {far['latency_ms']:.0f} ms round "
          f"trip added; ratio {far['ratio']:.2f} (target >= 0.80)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
