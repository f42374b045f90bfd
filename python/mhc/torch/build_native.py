"""Builds mhc.torch's C++ launch path (mhc.torch.native) for the PyTorch in use, ahead of the
first forward that would otherwise build it (under a minute):

    python -m mhc.torch.build_native

Run it where the model trains (a copy built elsewhere only loads with the identical PyTorch).
"""

import argparse
import sys

from . import native


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m mhc.torch.build_native",
                                description="Build mhc.torch's C++ launch path for this PyTorch.")
    p.parse_args(argv)
    if native.mode() == "off":
        print("MHC_NATIVE=0: the C++ launch path is turned off", file=sys.stderr)
        return 1
    module = native.load()
    if module is None:
        print(f"mhc native: not built: {native.failure()}", file=sys.stderr)
        return 1
    print(f"mhc native: {module.__file__} (CUDA streams: {module.built_with_cuda()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
