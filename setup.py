"""Build hook for the optional C helpers of the hot path; metadata is in pyproject.toml.

* ``shm._fastwrite``: seqlocked shm record stores (shm/native.py);
* ``feedhandler.upbit._hotjson``: the published JSON of a trade (feedhandler/upbit/hot.py).

Both are optional: without a C compiler the install still succeeds and the same work is
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
            depends=["shm/_slots.h"],
            optional=True,
            extra_compile_args=FLAGS,
        )
        for name, source in (
            ("shm._fastwrite", "shm/_fastwrite.c"),
            ("feedhandler.upbit._hotjson", "feedhandler/upbit/_hotjson.c"),
        )
    ]
)
