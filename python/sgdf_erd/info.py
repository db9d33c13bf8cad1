"""`python -m sgdf_erd.info` prints what this installation was built with."""

import json

from . import build_info

if __name__ == "__main__":
    print(json.dumps(build_info(), indent=2))
