"""TF Serving's REST JSON <-> tensor conversion, with its exact error texts.

Mirrors `tensorflow_serving/util/json_tensor.cc` (read, not copied): request bodies are parsed like rapidjson with
NaN/Infinity allowed and trailing bytes ignored, `instances` (row) and `inputs` (columnar) are turned into numpy
arrays checked against the signature's input dtypes, and output tensors are written back as `predictions` /
`outputs`. Every user-facing problem raises `ServingError` whose code maps to the same HTTP status as the real
server (`http_status`).

Known differences (documented in serving/README or the report): parse-error offsets come from Python's json
decoder (same message family, offsets may differ by a few bytes); responses are compact instead of rapidjson's
pretty print; debug echoes of request JSON write numbers with Python's repr.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import json
import math
import re
from dataclasses import dataclass

import numpy as np

# google.rpc / absl status code name -> HTTP status (http_server.cc ToHTTPStatusCode).
HTTP_STATUS = {
    "OK": 200,
    "CANCELLED": 499,
    "UNKNOWN": 500,
    "INVALID_ARGUMENT": 400,
    "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "PERMISSION_DENIED": 403,
    "RESOURCE_EXHAUSTED": 429,
    "FAILED_PRECONDITION": 400,
    "ABORTED": 409,
    "OUT_OF_RANGE": 400,
    "UNIMPLEMENTED": 501,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DATA_LOSS": 500,
    "UNAUTHENTICATED": 401,
}

ROW = "row"
COLUMNAR = "columnar"
DEFAULT_SIGNATURE = "serving_default"
_MAX_DEBUG_BYTES = 256  # kMaxJsonDebugStringBytes


class ServingError(Exception):
    """A request failure carrying a canonical status code name (e.g. "INVALID_ARGUMENT") and message."""

    def __init__(self, code: str, message: str):
        if code not in HTTP_STATUS:
            raise ValueError(f"code must be a canonical status name, got {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def http_status(self) -> int:
        return HTTP_STATUS[self.code]

    def to_string(self) -> str:
        """absl::Status::ToString() form, used when the server nests one error inside another."""
        return f"{self.code}: {self.message}"


def invalid(message: str) -> ServingError:
    return ServingError("INVALID_ARGUMENT", message)


def error_body(message: str) -> bytes:
    """The `{"error": ...}` body of every failed request (MakeJsonFromStatus), always valid UTF-8.

    Messages may quote request bytes that are not UTF-8 (raw bytes or lone-surrogate escapes, which rapidjson
    accepts). The real server copies them into the body as they came, so its body is then not valid UTF-8 and
    strict JSON clients fail on it; here each such character becomes U+FFFD.
    """
    return json.dumps({"error": message}, ensure_ascii=False).encode("utf-8", "bertbc_replacement_char")


def _replacement_char(err: UnicodeEncodeError):
    return "\ufffd".encode() * (err.end - err.start), err.end  # bytes: the UTF-8 codec takes only ASCII str


def _raw_bytes_or_surrogates(err: UnicodeEncodeError):
    """Codec error handler: U+DC80..U+DCFF are raw request bytes (surrogateescape), other lone surrogates are
    JSON escapes like "\\udc00", which rapidjson 1.1.0 keeps and writes as 3-byte UTF-8 (surrogatepass)."""
    out = bytearray()
    for ch in err.object[err.start:err.end]:
        code = ord(ch)
        out += bytes([code - 0xDC00]) if 0xDC80 <= code <= 0xDCFF else ch.encode("utf-8", "surrogatepass")
    return bytes(out), err.end


codecs.register_error("bertbc_rapidjson", _raw_bytes_or_surrogates)
codecs.register_error("bertbc_replacement_char", _replacement_char)


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "bertbc_rapidjson")


# ----------------------------------------------------------------------------------------------------------------
# Parsing


_PY_TO_RAPIDJSON = (
    ("Expecting value", "Invalid value."),
    ("Expecting property name enclosed in double quotes", "Missing a name for object member."),
    ("Expecting ':' delimiter", "Missing a colon after a name of object member."),
    ("Unterminated string", "Missing a closing quotation mark in string."),
    ("Invalid \\uXXXX escape", "Incorrect hex digit after \\u escape in string."),
    ("Invalid \\escape", "Invalid escape character in string."),
)
_INT64_MIN, _UINT64_MAX = -(2**63), 2**64 - 1
# A JSON token scanner used only to locate errors the stdlib decoder does not report with an offset.
_TOKEN_RE = re.compile(r'"(?:[^"\\]|\\.)*"?|-?[0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]*)?|[^"0-9-]+|.', re.DOTALL)
_ESCAPE_RE = re.compile(r"\\(?:u([0-9a-fA-F]{4})(?:\\u([0-9a-fA-F]{4}))?|.)", re.DOTALL)


class _NumberTooBig(Exception):
    pass


def _parse_int(text: str):
    """rapidjson keeps integers in [-2^63, 2^64) exact and stores bigger ones as doubles (no digit limit)."""
    if len(text) <= 21:
        value = int(text)
        if _INT64_MIN <= value <= _UINT64_MAX:
            return value
    return _parse_float(text)


def _parse_float(text: str) -> float:
    value = float(text)  # float() has no digit limit, unlike int()
    if math.isinf(value):
        raise _NumberTooBig(text)
    return value


def _surrogate_error(text: str) -> int | None:
    """Offset (in characters) of the first high-surrogate escape not followed by a low one, else None.

    rapidjson 1.1.0 (reader.h ParseStringToStream) rejects "\\ud800" alone or followed by anything but
    \\udc00-\\udfff with kParseErrorStringUnicodeSurrogateInvalid at the first backslash; a lone low
    surrogate passes. Python's json accepts both, so strings are scanned here.
    """
    if "\\u" not in text:
        return None
    for token in _TOKEN_RE.finditer(text):
        piece = token.group()
        if not piece.startswith('"') or "\\u" not in piece:
            continue
        for escape in _ESCAPE_RE.finditer(piece):
            high, low = escape.group(1), escape.group(2)
            if high and 0xD800 <= int(high, 16) <= 0xDBFF and not (low and 0xDC00 <= int(low, 16) <= 0xDFFF):
                return token.start() + escape.start()
    return None


def _first_huge_number(text: str) -> int:
    """Offset of the first number token that does not fit a double (kParseErrorNumberTooBig)."""
    for token in _TOKEN_RE.finditer(text):
        piece = token.group()
        if piece[:1] in "-0123456789" and piece not in ("-",):
            try:
                if math.isinf(float(piece.rstrip(".eE+-"))):
                    return token.start()
            except ValueError:
                continue
    return 0


def _innermost_container(text: str, pos: int) -> str:
    """Returns '{' or '[' for the innermost open container before `pos` (to word the comma error like rapidjson)."""
    stack, in_string, escaped = [], False, False
    for ch in text[:pos]:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            stack.append(ch)
        elif ch in "]}" and stack:
            stack.pop()
    return stack[-1] if stack else "{"


def _first_key_wins(pairs):
    out = {}
    for key, value in pairs:
        out.setdefault(key, value)  # rapidjson FindMember returns the first duplicate
    return out


def _offset(text: str, pos: int) -> int:
    return len(_encode(text[:pos]))


def parse_json(body: bytes) -> dict:
    """Parses a request body like TF Serving's ParseJson (rapidjson 1.1.0, iterative, NaN/Inf, stop when done).

    Args:
      body: raw request bytes; invalid UTF-8 inside strings is kept (as surrogate escapes) like rapidjson,
        which transcodes UTF-8 to UTF-8 without validation.

    Returns:
      The top-level JSON object as a dict.

    Raises:
      ServingError: INVALID_ARGUMENT with "JSON Parse error: <rapidjson message> at offset: N" or
        "... Is not object". Never anything else, whatever the bytes.
    """
    if not body:
        raise invalid("JSON Parse error: The document is empty")
    text = body.decode("utf-8", "surrogateescape")
    start = len(text) - len(text.lstrip(" \t\r\n"))
    if start == len(text):
        raise invalid(f"JSON Parse error: The document is empty. at offset: {len(body)}")
    decoder = json.JSONDecoder(object_pairs_hook=_first_key_wins, parse_int=_parse_int, parse_float=_parse_float)
    surrogate_at = _surrogate_error(text)
    try:
        doc, _ = decoder.raw_decode(text, start)  # trailing bytes ignored (kParseStopWhenDoneFlag)
    except RecursionError:
        # rapidjson parses iteratively (any depth); Python's decoder recurses. Such documents can only fail
        # later anyway (a tensor of rank > 254 is not a valid TensorShape).
        raise invalid("JSON Parse error: document nested too deeply for the dev server's JSON parser") from None
    except _NumberTooBig:
        at = _first_huge_number(text)
        if surrogate_at is not None and surrogate_at < at:
            at, message = surrogate_at, "The surrogate pair in string is invalid."
        else:
            message = "Number too big to be stored in double."
        raise invalid(f"JSON Parse error: {message} at offset: {_offset(text, at)}") from None
    except json.JSONDecodeError as err:
        if surrogate_at is not None and surrogate_at < err.pos:
            raise invalid(
                f"JSON Parse error: The surrogate pair in string is invalid. at offset: {_offset(text, surrogate_at)}"
            ) from None
        raise _decode_error(text, err) from None
    if surrogate_at is not None:
        raise invalid(
            f"JSON Parse error: The surrogate pair in string is invalid. at offset: {_offset(text, surrogate_at)}"
        )
    if not isinstance(doc, dict):
        raise format_error(doc, "Is not object")
    return doc


def _decode_error(text: str, err: json.JSONDecodeError) -> ServingError:
    """Words a stdlib JSONDecodeError like rapidjson's GetParseError_En, with rapidjson's byte offset."""
    pos, message = err.pos, "Invalid value."
    if err.msg.startswith("Expecting ',' delimiter"):
        here = text[pos] if pos < len(text) else ""
        if here == "." and pos and text[pos - 1].isdigit():
            message, pos = "Miss fraction part in number.", pos + 1
        elif here in ("e", "E") and pos and text[pos - 1].isdigit():
            pos += 2 if text[pos + 1 : pos + 2] in ("+", "-") else 1
            message = "Miss exponent in number."
        elif _innermost_container(text, pos) == "{":
            message = "Missing a comma or '}' after an object member."
        else:
            message = "Missing a comma or ']' after an array element."
    elif err.msg.startswith("Invalid control character"):
        # rapidjson: a raw NUL ends the stream inside the string; other control characters are bad escapes.
        message = "Missing a closing quotation mark in string." if text[pos] == "\0" else (
            "Invalid escape character in string.")
    elif err.msg.startswith("Unterminated string"):
        message, pos = "Missing a closing quotation mark in string.", len(text)
    elif err.msg.startswith("Invalid \\uXXXX escape"):
        message, pos = "Incorrect hex digit after \\u escape in string.", max(0, pos - 1)
    else:
        for prefix, rapid in _PY_TO_RAPIDJSON:
            if err.msg.startswith(prefix):
                message = rapid
                break
    return invalid(f"JSON Parse error: {message} at offset: {_offset(text, pos)}")


# ----------------------------------------------------------------------------------------------------------------
# Debug strings and type names used inside error messages


class _Full(Exception):
    pass


def _number_text(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return repr(value)


def debug_string(value) -> str:
    """Compact JSON of `value`, cut at a token boundary after ~256 bytes (JsonValueToDebugString)."""
    out: list[str] = []
    size = 0

    def emit(token: str) -> None:
        nonlocal size
        if size >= _MAX_DEBUG_BYTES:
            raise _Full
        out.append(token)
        size += len(_encode(token))

    def walk(val, prefix: str) -> None:
        if isinstance(val, dict):
            emit(prefix + "{")
            for i, (key, item) in enumerate(val.items()):
                emit(("," if i else "") + json.dumps(key, ensure_ascii=False))
                walk(item, ":")
            emit("}")
        elif isinstance(val, list):
            emit(prefix + "[")
            for i, item in enumerate(val):
                walk(item, "," if i else "")
            emit("]")
        elif isinstance(val, str):
            emit(prefix + json.dumps(val, ensure_ascii=False))
        elif val is None:
            emit(prefix + "null")
        else:
            emit(prefix + _number_text(val))

    try:
        walk(value, "")
    except _Full:
        pass
    return "".join(out)


def json_type(value) -> str:
    """rapidjson type name as printed by TF Serving (JsonTypeString)."""
    if value is None:
        return "Null"
    if value is True:
        return "True"
    if value is False:
        return "False"
    if isinstance(value, dict):
        return "Object"
    if isinstance(value, list):
        return "Array"
    if isinstance(value, str):
        return "String"
    return "Number"


def format_error(value, *parts: str) -> ServingError:
    return invalid(f"JSON Value: {debug_string(value)} " + "".join(parts))


# ----------------------------------------------------------------------------------------------------------------
# JSON -> tensors

# DataType enum name (as in SignatureDef protos) -> (DataTypeString, numpy dtype)
DTYPES = {
    "DT_FLOAT": ("float", np.float32),
    "DT_DOUBLE": ("double", np.float64),
    "DT_INT32": ("int32", np.int32),
    "DT_INT16": ("int16", np.int16),
    "DT_INT8": ("int8", np.int8),
    "DT_UINT8": ("uint8", np.uint8),
    "DT_INT64": ("int64", np.int64),
    "DT_UINT32": ("uint32", np.uint32),
    "DT_UINT64": ("uint64", np.uint64),
    "DT_BOOL": ("bool", np.bool_),
    "DT_STRING": ("string", object),
}
_INT_RANGES = {
    "DT_INT32": (-(2**31), 2**31 - 1),
    "DT_INT16": (-(2**31), 2**31 - 1),  # rapidjson IsInt(): any 32-bit int, narrowed later
    "DT_INT8": (-(2**31), 2**31 - 1),
    "DT_UINT8": (-(2**31), 2**31 - 1),
    "DT_INT64": (-(2**63), 2**63 - 1),
    "DT_UINT32": (0, 2**32 - 1),
    "DT_UINT64": (0, 2**64 - 1),
}


def _type_error(value, dtype: str) -> ServingError:
    return invalid(
        f"JSON Value: {debug_string(value)} Type: {json_type(value)} is not of expected type: {DTYPES[dtype][0]}"
    )


def _is_b64(value) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def _b64decode(value) -> bytes:
    if not _is_b64(value):
        raise invalid(f"JSON Value: {debug_string(value)} not formatted correctly for base64 data")
    data = value["b64"].strip()
    try:
        return base64.b64decode(data + "=" * (-len(data) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise invalid("Unable to base64 decode") from None


def _scalar(value, dtype: str):
    """One JSON leaf -> Python value for `dtype` (AddValueToTensor)."""
    if dtype not in DTYPES:
        raise ServingError("UNIMPLEMENTED", f"Conversion of JSON Value: {debug_string(value)} to type: {dtype}")
    if isinstance(value, dict):
        if dtype == "DT_STRING":
            return _b64decode(value)
        raise _type_error(value, dtype)
    if dtype == "DT_STRING":
        if not isinstance(value, str):
            raise _type_error(value, dtype)
        return _encode(value)
    if dtype == "DT_BOOL":
        if not isinstance(value, bool):
            raise _type_error(value, dtype)
        return value
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if dtype in ("DT_FLOAT", "DT_DOUBLE"):
        if not is_number:
            raise _type_error(value, dtype)
        return float(value)
    low, high = _INT_RANGES[dtype]
    if not (is_number and isinstance(value, int) and low <= value <= high):
        raise _type_error(value, dtype)
    return value


def _dense_shape(value) -> list[int]:
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _fill(value, level: int, dtype: str, shape: list[int], out: list) -> None:
    """Flattens `value` into `out`, checking it is dense with `shape` (FillTensorProto)."""
    rank = len(shape)
    if not isinstance(value, list):
        if level != rank:
            raise invalid(
                f"JSON Value: {debug_string(value)} found at incorrect level: {level + 1} in the JSON DOM. "
                f"Expected at level: {rank}"
            )
        out.append(_scalar(value, dtype))
        return
    if level >= rank:
        raise invalid(f"Encountered list at unexpected level: {level} expected < {rank}")
    if len(value) != shape[level]:
        raise invalid(
            f"Encountered list at unexpected size: {len(value)} at level: {level} expected size: {shape[level]}"
        )
    for item in value:
        _fill(item, level + 1, dtype, shape, out)


def _to_array(values: list, shape: list[int], dtype: str) -> np.ndarray:
    np_dtype = DTYPES[dtype][1]
    if np_dtype is object:
        array = np.empty(len(values), dtype=object)
        array[:] = values
        return array.reshape(shape)
    return np.asarray(values, dtype=np_dtype).reshape(shape)


def _shape_text(shape: list[int]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


@dataclass
class _Batch:
    values: list
    item_shape: list[int] | None = None
    item_size: int | None = None


_MAX_RANK = 254  # TensorShape::MaxDimensions(); a deeper tensor fails Tensor::FromProto in the real server
_NUMPY_MAX_RANK = 32  # numpy 1.x limit (2.x allows 64); no signature input of a served model is that deep


def _check_rank(name: str, rank: int) -> None:
    if rank > _MAX_RANK:
        raise invalid(f"tensor parsing error: {name}")
    if rank > _NUMPY_MAX_RANK:
        raise invalid(f"Input {name} has rank {rank}; the dev server handles at most {_NUMPY_MAX_RANK} dimensions")


def _add_instance_item(item, name: str, inputs: dict[str, str], batches: dict[str, _Batch]) -> None:
    if name not in inputs:
        raise invalid(f"JSON object: does not have named input: {name}")
    shape = _dense_shape(item)
    _check_rank(name, len(shape) + 1)
    values: list = []
    _fill(item, 0, inputs[name], shape, values)
    batch = batches.setdefault(name, _Batch(values=[]))
    if batch.item_size is None:
        batch.item_size, batch.item_shape = len(values), shape
    elif batch.item_size != len(values):
        raise invalid(f"Expecting tensor size: {batch.item_size} but got: {len(values)}")
    elif batch.item_shape != shape:
        raise invalid(f"Expecting shape {_shape_text(batch.item_shape)} but got: {_shape_text(shape)}")
    batch.values.extend(values)


def _instances_to_arrays(instances: list, inputs: dict[str, str]) -> dict[str, np.ndarray]:
    first = instances[0]
    if not isinstance(first, dict) and len(inputs) > 1:
        raise invalid(
            "instances is a plain list, but expecting list of objects as multiple input tensors required "
            "as per tensorinfo_map"
        )

    def is_named_object(value) -> bool:
        return isinstance(value, dict) and not _is_b64(value)

    objects = is_named_object(first)
    names = sorted(inputs)
    batches: dict[str, _Batch] = {}
    for index, element in enumerate(instances):
        if objects:
            if not is_named_object(element):
                raise invalid(f"Expecting object but got list at item {index} of input list")
            for key, item in element.items():
                try:
                    _add_instance_item(item, key, inputs, batches)
                except ServingError as err:
                    raise invalid(
                        f"Failed to process element: {index} key: {key} of 'instances' list. "
                        f"Error: {err.to_string()}"
                    ) from None
            if set(element) != set(names):
                raise invalid(
                    f"Failed to process element: {index} of 'instances' list. JSON object: "
                    f"{debug_string(element)} keys must be equal to: {','.join(names)}"
                )
        else:
            if is_named_object(element):
                raise invalid(f"Expecting value/list but got object at item {index} of input list")
            try:
                _add_instance_item(element, names[0], inputs, batches)
            except ServingError as err:
                raise invalid(
                    f"Failed to process element: {index} of 'instances' list. Error: {err.to_string()}"
                ) from None
    return {
        name: _to_array(b.values, [len(instances), *b.item_shape], inputs[name]) for name, b in batches.items()
    }


def _column_to_array(value, dtype: str, name: str) -> np.ndarray:
    shape = _dense_shape(value)
    _check_rank(name, len(shape))
    values: list = []
    _fill(value, 0, dtype, shape, values)
    return _to_array(values, shape, dtype)


def _inputs_to_arrays(value, inputs: dict[str, str]) -> dict[str, np.ndarray]:
    names = sorted(inputs)
    if not isinstance(value, dict) or _is_b64(value):
        if len(inputs) > 1:
            raise invalid(
                "inputs is a plain value/list, but expecting an object as multiple input tensors required "
                "as per tensorinfo_map"
            )
        return {names[0]: _column_to_array(value, inputs[names[0]], names[0])}
    arrays = {}
    for name in names:
        if name not in value:
            raise invalid(f"Missing named input: {name} in 'inputs' object.")
        arrays[name] = _column_to_array(value[name], inputs[name], name)
    return arrays


def request_signature_name(doc: dict) -> str:
    """The request's signature_name ("" when absent), validated like FillSignature."""
    name = doc.get("signature_name", "")
    if not isinstance(name, str):
        raise format_error(
            doc, "not formatted correctly. 'signature_name' key must be a string value."
        )
    return name


def predict_inputs(doc: dict, inputs: dict[str, str], signature_name: str = "") -> tuple[dict[str, np.ndarray], str]:
    """Turns a parsed predict body into input arrays (FillPredictRequestFromJson after the signature lookup).

    Args:
      doc: the parsed top-level JSON object.
      inputs: the signature's input names -> DataType enum names, e.g. {"text": "DT_STRING"}.
      signature_name: used only in the "Failed to get input map" message.

    Returns:
      (name -> numpy array with the batch as dim 0 for row requests; DT_STRING arrays hold bytes objects,
      ROW or COLUMNAR).
    """
    if not inputs:
        raise invalid(f"Failed to get input map for signature: {signature_name or 'DEFAULT'}")
    has_instances, has_inputs = "instances" in doc, "inputs" in doc
    if has_instances and has_inputs:
        raise format_error(
            doc, "Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist "
        )
    if has_instances:
        instances = doc["instances"]
        if not isinstance(instances, list):
            raise format_error(doc, "Expecting 'instances' to be an list/array")
        if not instances:
            raise format_error(doc, "No values in 'instances' array")
        return _instances_to_arrays(instances, inputs), ROW
    if has_inputs:
        return _inputs_to_arrays(doc["inputs"], inputs), COLUMNAR
    raise invalid("Missing 'inputs' or 'instances' key")


def check_classify_regress_body(doc: dict, method: str) -> None:
    """Validates a :classify/:regress body shape (FillClassifyRegressRequestFromJson) before model lookup."""
    request_signature_name(doc)
    if "context" in doc and not isinstance(doc["context"], dict):
        raise invalid(f"Example must be JSON object but got JSON {json_type(doc['context'])}")
    if "examples" not in doc:
        # The real server says "classify" for both methods.
        raise format_error(doc, "When method is classify, key 'examples' is expected and was not found")
    examples = doc["examples"]
    if not isinstance(examples, list):
        raise format_error(doc, "Expecting 'examples' value to be an list/array")
    if not examples:
        raise format_error(doc, "'examples' value is an empty array")
    for example in examples:
        if not isinstance(example, dict):
            raise invalid(f"Example must be JSON object but got JSON {json_type(example)}")


# ----------------------------------------------------------------------------------------------------------------
# tensors -> JSON


def format_float(value: float, *, double: bool = False) -> str:
    """WriteDecimal: %g (6 digits) if it round-trips, else max_digits10; '.0' added to bare integers."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    text = f"{value:g}"
    if double:
        if float(text) != value:
            text = f"{value:.17g}"
    elif np.float32(text) != np.float32(value):
        text = f"{value:.9g}"
    if "." not in text and "e" not in text:
        text += ".0"
    return text


def _leaf_writer(array: np.ndarray, name: str):
    kind = array.dtype.kind
    if kind == "f":
        double = array.dtype == np.float64
        return lambda v: format_float(v, double=double)
    if kind == "b":
        return lambda v: "true" if v else "false"
    if kind in "iu":
        return str
    if kind in "OSU":
        if name.endswith("_bytes"):
            return lambda v: '{"b64": "' + base64.b64encode(_as_bytes(v)).decode("ascii") + '"}'
        return lambda v: json.dumps(_as_bytes(v).decode("utf-8", "surrogateescape"), ensure_ascii=False)
    raise invalid(f"Failed to write JSON value for tensor type: {array.dtype}")


def _as_bytes(value) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode("utf-8")


def _tensor_json(array: np.ndarray, name: str, skip_batch: bool) -> list[str]:
    """JSON texts for the tensor (whole, or one per row when `skip_batch`)."""
    leaf = _leaf_writer(array, name)

    def write(value) -> str:
        if isinstance(value, list):
            return "[" + ", ".join(write(v) for v in value) + "]"
        return leaf(value)

    values = array.tolist()
    if skip_batch:
        return [write(v) for v in values]
    return [write(values)]


def make_predict_response(outputs: dict[str, np.ndarray], fmt: str) -> bytes:
    """Renders output arrays as `{"predictions": ...}` (row) or `{"outputs": ...}` (columnar) bytes."""
    if not outputs:
        raise invalid("Cannot convert empty tensor map to JSON")
    names = list(outputs)
    if fmt == COLUMNAR:
        if len(names) == 1:
            body = _tensor_json(outputs[names[0]], names[0], skip_batch=False)[0]
        else:
            body = "{" + ", ".join(
                json.dumps(n) + ": " + _tensor_json(outputs[n], n, skip_batch=False)[0] for n in names
            ) + "}"
        return _encode('{"outputs": ' + body + "}")
    if fmt != ROW:
        raise invalid("Invalid request format")
    batch = -1
    for name in names:
        shape = outputs[name].shape
        if len(shape) == 0:
            raise invalid(f"Tensor name: {name} has no shape information ")
        if batch >= 0 and shape[0] != batch:
            raise invalid(f"Tensor name: {name} has inconsistent batch size: {shape[0]} expecting: {batch}")
        batch = shape[0]
    rows = {n: _tensor_json(outputs[n], n, skip_batch=True) for n in names}
    if len(names) == 1:
        items = rows[names[0]]
    else:
        keys = {n: json.dumps(n) + ": " for n in names}
        items = ["{" + ", ".join(keys[n] + rows[n][i] for n in names) + "}" for i in range(batch)]
    return _encode('{"predictions": [' + ", ".join(items) + "]}")
