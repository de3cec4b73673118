"""The one place that loads libacb and declares its functions.

Signatures are derived from the generated header `acb.h` (shipped in this package, or found in
the source tree's include/), never written by hand: the C types of each prototype map to ctypes.
The library is `ACB_LIBRARY` if set, else the one built into this package, else the source
tree's target/{release,debug}/libacb.so (for development).
"""
import ctypes
import glob
import os
import re

_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.normpath(os.path.join(_HERE, "..", "..", ".."))


def _find_library() -> str:
    env = os.environ.get("ACB_LIBRARY")
    if env:
        return env
    candidates = sorted(glob.glob(os.path.join(_HERE, "_libacb*")))
    for profile in ("release", "debug"):
        candidates.append(os.path.join(_ROOT, "target", profile, "libacb.so"))
    for c in candidates:
        if os.path.exists(c):
            return c
    raise ImportError(
        "libacb not found: install the package with `pip install ./bindings/python`, "
        "or set ACB_LIBRARY to the path of libacb.so"
    )


def _find_header() -> str:
    # In a source tree, include/acb.h is the truth: the copy beside the package is what the
    # last `pip install` left there, and may be older.
    for c in (os.path.join(_ROOT, "include", "acb.h"), os.path.join(_HERE, "acb.h")):
        if os.path.exists(c):
            return c
    raise ImportError("acb.h not found beside the package or in include/")


_SCALARS = {
    "void": None,
    "bool": ctypes.c_bool,
    "uint32_t": ctypes.c_uint32,
    "int32_t": ctypes.c_int32,
    "uint64_t": ctypes.c_uint64,
    "size_t": ctypes.c_size_t,
    "ptrdiff_t": ctypes.c_ssize_t,
    "acb_status": ctypes.c_uint32,
    "char": ctypes.c_char,
}


def _ctype(decl: str):
    """The ctypes type of a C parameter or return declaration (without its name)."""
    decl = decl.replace("const ", "").strip()
    stars = decl.count("*")
    base = decl.replace("*", "").strip()
    if stars == 0:
        if base not in _SCALARS:
            raise ImportError(f"acb.h: unsupported type {decl!r}")
        return _SCALARS[base]
    if base == "char" and stars == 1:
        return ctypes.c_char_p
    if base == "void" and stars == 1:
        return ctypes.c_void_p  # device memory
    if base == "void" and stars == 2:
        return ctypes.POINTER(ctypes.c_void_p)  # an output pointer
    if base.startswith("acb_") and stars == 1:
        return ctypes.c_void_p  # an opaque handle
    if base.startswith("acb_") and stars == 2:
        return ctypes.POINTER(ctypes.c_void_p)  # an output handle
    if stars == 1 and base in _SCALARS and _SCALARS[base] is not None:
        return ctypes.POINTER(_SCALARS[base])  # an output scalar
    raise ImportError(f"acb.h: unsupported type {decl!r}")


_PROTO = re.compile(r"^\s*([\w\s\*]+?)\s*\b(acb_\w+)\(([^)]*)\);", re.M | re.S)


def parse_header(text: str) -> dict:
    """{function name: (restype, [argtypes])} for every prototype in the header."""
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r"^\s*#.*$", "", text, flags=re.M)
    out = {}
    for ret, name, params in _PROTO.findall(text):
        if ret.strip().startswith(("typedef", "enum", "struct")):
            continue
        args = []
        params = " ".join(params.split())
        if params and params != "void":
            for p in params.split(","):
                p = p.strip()
                m = re.match(r"^(.*?)(\w+)$", p)
                if not m:
                    raise ImportError(f"acb.h: cannot read parameter {p!r} of {name}")
                args.append(_ctype(m.group(1)))
        out[name] = (_ctype(ret), args)
    return out


def parse_structs(text: str) -> dict:
    """{struct name: ctypes.Structure subclass} for every `typedef struct { ... } name;` of
    scalar fields in the header (acb_memory_stats), so that their layout is the header's."""
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    out = {}
    for body, name in re.findall(r"typedef\s+struct\s*\{([^}]*)\}\s*(acb_\w+)\s*;", text, flags=re.S):
        fields = []
        for decl in body.split(";"):
            decl = " ".join(decl.split())
            if not decl:
                continue
            m = re.match(r"^(.*?)(\w+)$", decl)
            if not m or m.group(1).strip() not in _SCALARS or _SCALARS[m.group(1).strip()] is None:
                raise ImportError(f"acb.h: cannot read field {decl!r} of {name}")
            fields.append((m.group(2), _SCALARS[m.group(1).strip()]))
        out[name] = type(name, (ctypes.Structure,), {"_fields_": fields})
    return out


def _constants(text: str) -> dict:
    consts = {m.group(1): int(m.group(2)) for m in re.finditer(r"#define\s+(ACB_\w+)\s+(\d+)", text)}
    consts.update({m.group(1): int(m.group(2)) for m in re.finditer(r"\b(ACB_STATUS_\w+)\s*=\s*(\d+)", text)})
    return consts


with open(_find_header(), encoding="utf-8") as _f:
    _HEADER_TEXT = _f.read()

SIGNATURES = parse_header(_HEADER_TEXT)
STRUCTS = parse_structs(_HEADER_TEXT)
CONSTANTS = _constants(_HEADER_TEXT)
LIBRARY_PATH = _find_library()
lib = ctypes.CDLL(LIBRARY_PATH)
for _name, (_restype, _argtypes) in SIGNATURES.items():
    _fn = getattr(lib, _name)
    _fn.restype = _restype
    _fn.argtypes = _argtypes

if lib.acb_abi_version() != CONSTANTS.get("ACB_ABI_VERSION"):
    raise ImportError(
        f"libacb at {LIBRARY_PATH} implements ABI {lib.acb_abi_version()}, "
        f"but acb.h says {CONSTANTS.get('ACB_ABI_VERSION')}"
    )
