"""Build hook for the optional C helpers of the hot path; metadata is in pyproject.toml.

* ``shm._fastwrite``: seqlocked shm record stores (shm/native.py);
* ``shm._fastread``: the shm reader's seqlocked ring copy (shm/native.py);
* ``feedhandler.upbit._hotjson``: the published JSON of a trade (feedhandler/upbit/hot.py).

All are optional: without a C compiler the install still succeeds and the same work is
done in Python, with the same results.
"""

from setuptools import Extension, setup

FLAGS = ["-O2", "-std=c11", "-Wall", "-Wextra", "-Wno-unused-parameter"]

setup(
    ext_modules=[
        Extension(
            name,
            [source],
            include_dirs=["shm"],
            depends=["shm/_slots.h", "shm/_notify.h"],
            optional=True,
            extra_compile_args=FLAGS,
        )
        for name, source in (
            ("shm._fastwrite", "shm/_fastwrite.c"),
            ("shm._fastread", "shm/_fastread.c"),
            ("feedhandler.upbit._hotjson", "feedhandler/upbit/_hotjson.c"),
        )
    ]
)
