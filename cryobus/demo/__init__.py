"""Demo: a synthetic RELION 5 acquisition (synthetic.py, ctf.py) and the end-to-end demo run (run.py)."""
