import sys
from pathlib import Path

# the benchmark scripts import each other by bare name (they run as scripts)
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
