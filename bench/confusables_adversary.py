"""How many look-alike disguises get through the processor, without and with the confusables option.

The adversary of tests/text/test_confusables.py (a fake model steering toward a phrase spelled with
look-alikes from Unicode's confusables.txt, on top of the plain adversary's disguises) runs N
generations per tokenizer with the processor built without and with `confusables=True`; the judge
is the test's independent one. Needs the test data (CULL_DATA_DIR) and the tests folder.

    nice -n 5 python -m bench.confusables_adversary
"""
from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

from .common import write_results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--generations", type=int, default=20)
    args = ap.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from test_adversarial import TOKENIZERS
    from test_confusables import adversarial_generation, confusable_spelling, judge

    rows = []
    for name in TOKENIZERS:
        row = {"name": name, "generations": args.generations}
        for confusables in (False, True):
            got = sum(judge(adversarial_generation(name, random.Random(i), spell=confusable_spelling,
                                                   confusables=confusables)[0]) is not None
                      for i in range(args.generations))
            row["phrases_written_" + ("with_option" if confusables else "without_option")] = got
        rows.append(row)
        print(row, flush=True)
    path = write_results("confusables-adversary", rows,
                         extra={"command": "nice -n 5 python -m bench.confusables_adversary"})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
