"""Demo and end-to-end scripts, run as files (`python scripts/demo_proxy.py ...`); a package only so the
demos at the repository root share `scripts.demo_summary` under one name."""
