"""Known vulnerabilities in the pinned requirements (and in what ``.venv`` actually installed).

    python scripts/audit.py                          # pip-audit, in its own venv (runs/audit-venv): pins untouched
    python scripts/audit.py --service osv            # pip-audit against OSV instead of PyPI's JSON API
    python scripts/audit.py --advisory-db DIR --installed .venv   # also offline: a pypa/advisory-database checkout

pip-audit asks a vulnerability service per pinned version (PyPI's ``/pypi/<name>/<version>/json`` by default). A
pin it cannot look up is *not audited*, which pip-audit reports only as a skip reason; this script counts those
and says so instead of calling the run clean. ``--advisory-db`` reads the OSV YAML files of a local checkout of
https://github.com/pypa/advisory-database (``vulns/<package>/*.yaml``) and prints the newest advisory date it
holds, so a stale copy is visible. Exit status: 1 a known vulnerability, 3 some pins could not be audited, 0 clean.
Reports go to ``runs/audit/``.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REQUIREMENTS = (
    "requirements.txt",
    "requirements-pipeline.txt",
    "requirements-mlflow-server.txt",
    "requirements-dev.txt",
)
PIP_AUDIT = "pip-audit==2.10.1"
PIN = re.compile(r"^\s*([A-Za-z0-9._\[\]-]+?)(?:\[[^\]]*\])?==([^\s;#]+)")


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(files: list[Path]) -> dict[str, str]:
    """``name -> version`` of every ``name==version`` line (extras dropped)."""
    found = {}
    for path in files:
        for line in path.read_text().splitlines():
            match = PIN.match(line)
            if match:
                found[normalise(match[1].split("[")[0])] = match[2]
    return found


def audit_venv(path: Path) -> Path:
    binary = path / "bin" / "pip-audit"
    if not binary.exists():
        venv.create(path, with_pip=True)
        subprocess.run([str(path / "bin" / "pip"), "install", "-q", PIP_AUDIT], check=True)
    return binary


def run_pip_audit(binary: Path, target: list[str], service: str, out: Path) -> dict:
    """pip-audit's JSON report of one target; ``{"error": ...}`` when it did not produce one."""
    command = [str(binary), *target, "-s", service, "-f", "json", "-o", str(out), "--progress-spinner", "off"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    if not out.is_file():
        return {"error": (done.stderr or done.stdout).strip()[-2000:]}
    return json.loads(out.read_text())


def summarise(report: dict) -> dict:
    vulnerable, skipped, clean = {}, {}, []
    for dep in report.get("dependencies", []):
        key = f"{dep['name']}=={dep['version']}" if "version" in dep else dep["name"]
        if dep.get("skip_reason"):
            skipped[key] = dep["skip_reason"]
        elif dep.get("vulns"):
            fixes = [", ".join(v.get("fix_versions") or ["-"]) for v in dep["vulns"]]
            vulnerable[key] = [f"{v['id']} (fixed in {fix})" for v, fix in zip(dep["vulns"], fixes, strict=True)]
        else:
            clean.append(key)
    return {"vulnerable": vulnerable, "not_audited": skipped, "clean": clean}


def installed(site_packages: Path) -> dict[str, str]:
    found = {}
    for meta in site_packages.glob("*.dist-info/METADATA"):
        head = meta.read_text(errors="replace").splitlines()[:10]
        fields = dict(line.split(": ", 1) for line in head if ": " in line)
        if "Name" in fields and "Version" in fields:
            found[normalise(fields["Name"])] = fields["Version"]
    return found


def offline(db: Path, versions: dict[str, str]) -> tuple[dict, str]:
    """Advisories of ``db`` (OSV YAML) that affect ``versions``; and the newest ``modified`` date in ``db``."""
    import yaml
    from packaging.version import InvalidVersion, Version

    def affected(entry: dict, version: str) -> bool:
        if version in [str(v) for v in entry.get("versions") or []]:
            return True
        for span in entry.get("ranges") or []:
            if span.get("type") != "ECOSYSTEM":
                continue
            try:
                v, inside = Version(version), False
                for event in span.get("events", []):
                    if "introduced" in event:
                        inside = inside or v >= Version(str(event["introduced"]))
                    if "fixed" in event and v >= Version(str(event["fixed"])):
                        inside = False
                    if "last_affected" in event and v > Version(str(event["last_affected"])):
                        inside = False
                if inside:
                    return True
            except InvalidVersion:
                continue
        return False

    hits: dict[str, list[str]] = {}
    newest = ""
    for folder in sorted((db / "vulns").iterdir()):
        for path in folder.glob("*.yaml"):
            advisory = yaml.safe_load(path.read_text())
            newest = max(newest, str(advisory.get("modified", "")))
            if advisory.get("withdrawn"):  # retracted by its publisher
                continue
            for entry in advisory.get("affected", []):
                name = normalise(entry.get("package", {}).get("name", ""))
                if name in versions and affected(entry, versions[name]):
                    hits.setdefault(f"{name}=={versions[name]}", []).append(advisory["id"])
    return hits, newest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("requirements", nargs="*", default=list(REQUIREMENTS))
    parser.add_argument("--service", default="pypi", choices=("pypi", "osv"))
    parser.add_argument("--venv", default=str(ROOT / "runs" / "audit-venv"), help="where pip-audit is installed")
    parser.add_argument(
        "--installed",
        help="also audit every distribution this venv installed, e.g. .venv (pip-audit: one lookup per package)",
    )
    parser.add_argument("--advisory-db", help="a checkout of pypa/advisory-database to match against offline")
    parser.add_argument("--skip-pip-audit", action="store_true")
    args = parser.parse_args(argv)
    out = ROOT / "runs" / "audit"
    out.mkdir(parents=True, exist_ok=True)
    files = [ROOT / f for f in args.requirements]
    site = next(Path(args.installed).glob("lib/python3*/site-packages"), None) if args.installed else None
    results = {}
    if not args.skip_pip_audit:
        binary = audit_venv(Path(args.venv))
        targets = {f.name: ["-r", str(f), "--no-deps", "--disable-pip"] for f in files}
        if site is not None:
            targets["installed .venv"] = ["--path", str(site)]
        for name, target in targets.items():
            report = run_pip_audit(binary, target, args.service, out / f"{name.replace(' ', '-')}.json")
            results[name] = {"error": report["error"]} if "error" in report else summarise(report)
    if args.advisory_db:
        versions = {**(installed(site) if site else {}), **pins(files)}
        hits, newest = offline(Path(args.advisory_db), versions)
        results["advisory-db"] = {"vulnerable": hits, "packages": len(versions), "newest_advisory": newest}
    (out / "summary.json").write_text(json.dumps(results, indent=2))
    vulnerable = unaudited = False
    for name, result in results.items():
        if "error" in result:
            print(f"{name}: pip-audit failed: {result['error']}")
            unaudited = True
            continue
        if name == "advisory-db":
            print(f"advisory-db ({result['packages']} packages, advisories up to {result['newest_advisory']}):")
        else:
            audited = len(result["clean"]) + len(result["vulnerable"])
            print(f"{name}: {audited} audited, {len(result['not_audited'])} not audited ({args.service})")
            for key, reason in result["not_audited"].items():
                print(f"  not audited: {key}: {reason}")
            unaudited = unaudited or bool(result["not_audited"])
        for key, ids in result["vulnerable"].items():
            print(f"  VULNERABLE {key}: {'; '.join(ids)}")
            vulnerable = True
    print(f"reports: {out.relative_to(ROOT)}/")
    return 1 if vulnerable else 3 if unaudited else 0


if __name__ == "__main__":
    sys.exit(main())
