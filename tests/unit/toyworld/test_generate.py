"""``python -m clipcite.toyworld.generate`` (clipcite/toyworld/generate.py) says what it wrote once."""


def test_generate_prints_its_facts_once(tmp_path):
    import subprocess
    import sys

    argv = [sys.executable, "-m", "clipcite.toyworld.generate", "--out", str(tmp_path / "t"), "--train", "1"]
    out = subprocess.run([*argv, "--val", "1", "--test", "1"], capture_output=True, text=True, check=True)
    assert (out.stdout + out.stderr).count("rows") == 1, out.stdout + out.stderr
