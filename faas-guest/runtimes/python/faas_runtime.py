#!/usr/bin/env python3
"""faas_runtime: runs an unchanged AWS Lambda Python handler as a faas instance.

    python3 faas_runtime.py --handler lambda_function.lambda_handler --code DIR [--snapshot]

This file is only the entry point. Python compiles the script it is given on
every start (about 10 ms for the whole runtime) but loads imported modules
from their cached bytecode, so the runtime itself lives in _faas_runtime.py
next to this file. Where this directory is read-only, ship the bytecode:
`python3 -m compileall -q DIR`. See README.md.
"""

if __name__ == "__main__":
    import os
    import sys

    here = os.path.dirname(os.path.realpath(__file__))
    if sys.path[:1] != [here]:
        sys.path.insert(0, here)  # python3 -I / -P do not add the script's directory
    from _faas_runtime import main

    main()
else:
    from _faas_runtime import *  # noqa: F401,F403
