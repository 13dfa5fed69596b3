/*
 * The published JSON of a hot trade, in C (see trade_to_json in hot.py).
 *
 * render(trade) builds the same bytes as the Python path -- DEFAULT names in the
 * published order, each decimal as a JSON string holding the exact wire text -- for the
 * common case: every decimal a JSON number, every string printable ASCII with nothing
 * to escape, every integer within 64 bits, change and stream_type present. For anything
 * else it returns None and the Python path renders the trade (or raises for it).
 * Fields are read straight from the struct's slots (shm/_slots.h).
 */
#include "_slots.h"
#include <stdio.h>
#include <string.h>

enum {
    F_CODE, F_TIMESTAMP, F_TRADE_DATE, F_TRADE_TIME, F_TRADE_TIMESTAMP, F_TRADE_PRICE,
    F_TRADE_VOLUME, F_ASK_BID, F_PREV_CLOSING_PRICE, F_CHANGE, F_CHANGE_PRICE,
    F_SEQUENTIAL_ID, F_BEST_ASK_PRICE, F_BEST_ASK_SIZE, F_BEST_BID_PRICE, F_BEST_BID_SIZE,
    F_STREAM_TYPE, N_FIELDS
};

/* Attribute names of feedhandler.upbit.hot.HotTrade, in published order. */
static const char *attribute_names[N_FIELDS] = {
    "code", "timestamp", "trade_date", "trade_time", "trade_timestamp", "raw_trade_price",
    "raw_trade_volume", "ask_bid", "raw_prev_closing_price", "change", "raw_change_price",
    "sequential_id", "raw_best_ask_price", "raw_best_ask_size", "raw_best_bid_price",
    "raw_best_bid_size", "stream_type",
};

/* What precedes each field's value: the JSON key and, for strings, the opening quote. */
static const char *prefixes[N_FIELDS] = {
    "{\"type\":\"trade\",\"code\":\"", "\",\"timestamp\":", ",\"trade_date\":\"",
    "\",\"trade_time\":\"", "\",\"trade_timestamp\":", ",\"trade_price\":\"",
    "\",\"trade_volume\":\"", "\",\"ask_bid\":\"", "\",\"prev_closing_price\":\"",
    "\",\"change\":\"", "\",\"change_price\":\"", "\",\"sequential_id\":",
    ",\"best_ask_price\":\"", "\",\"best_ask_size\":\"", "\",\"best_bid_price\":\"",
    "\",\"best_bid_size\":\"", "\",\"stream_type\":\"",
};

enum { KIND_STR, KIND_INT, KIND_DECIMAL };
static const unsigned char kinds[N_FIELDS] = {
    KIND_STR, KIND_INT, KIND_STR, KIND_STR, KIND_INT, KIND_DECIMAL, KIND_DECIMAL, KIND_STR,
    KIND_DECIMAL, KIND_STR, KIND_DECIMAL, KIND_INT, KIND_DECIMAL, KIND_DECIMAL, KIND_DECIMAL,
    KIND_DECIMAL, KIND_STR,
};

_Static_assert(N_FIELDS <= MAX_SLOT_FIELDS, "too many trade fields for _slots.h");
static SlotCache trade_cache = {.names = attribute_names, .n = N_FIELDS};

#define OUT_CAPACITY 1024

typedef struct {
    char data[OUT_CAPACITY];
    size_t len;
} Out;

static inline int
append(Out *out, const char *bytes, size_t n)
{
    if (n > OUT_CAPACITY - out->len) {
        return 0;
    }
    memcpy(out->data + out->len, bytes, n);
    out->len += n;
    return 1;
}

/* A str with nothing JSON would escape: printable ASCII without '"' or '\\'. */
static int
append_plain_str(Out *out, PyObject *v)
{
    if (!PyUnicode_CheckExact(v) || !PyUnicode_IS_ASCII(v)) {
        return 0;
    }
    const char *text = (const char *)PyUnicode_1BYTE_DATA(v);
    Py_ssize_t n = PyUnicode_GET_LENGTH(v);
    for (Py_ssize_t i = 0; i < n; i++) {
        char c = text[i];
        if (c < 0x20 || c > 0x7e || c == '"' || c == '\\') {
            return 0;
        }
    }
    return append(out, text, (size_t)n);
}

static int
append_int(Out *out, PyObject *v)
{
    if (!PyLong_CheckExact(v)) {
        return 0;
    }
    int overflow = 0;
    long long n = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (overflow || (n == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        return 0;
    }
    char text[32];
    int len = snprintf(text, sizeof text, "%lld", n);
    return len > 0 && append(out, text, (size_t)len);
}

/* A raw JSON value made only of the bytes a JSON number can contain (msgspec checked
 * that it is valid JSON, so it is then a number, not null, a string or an object). */
static int
append_decimal(Out *out, PyObject *v)
{
    Py_buffer view;
    if (PyObject_GetBuffer(v, &view, PyBUF_SIMPLE) < 0) {
        PyErr_Clear();
        return 0;
    }
    const char *text = (const char *)view.buf;
    int ok = view.len > 0;
    for (Py_ssize_t i = 0; ok && i < view.len; i++) {
        char c = text[i];
        ok = (c >= '0' && c <= '9') || c == '-' || c == '+' || c == '.' || c == 'e' || c == 'E';
    }
    ok = ok && append(out, text, (size_t)view.len);
    PyBuffer_Release(&view);
    return ok;
}

static PyObject *
render(PyObject *module, PyObject *trade)
{
    PyObject *values[N_FIELDS];
    if (!read_fields(&trade_cache, trade, values)) {
        Py_RETURN_NONE;
    }
    Out out;
    out.len = 0;
    for (int f = 0; f < N_FIELDS; f++) {
        PyObject *v = values[f];
        if (!append(&out, prefixes[f], strlen(prefixes[f]))) {
            Py_RETURN_NONE;
        }
        int ok;
        switch (kinds[f]) {
        case KIND_STR:
            ok = append_plain_str(&out, v);
            break;
        case KIND_INT:
            ok = append_int(&out, v);
            break;
        default:
            ok = append_decimal(&out, v);
        }
        if (!ok) {
            Py_RETURN_NONE;
        }
    }
    if (!append(&out, "\"}", 2)) {
        Py_RETURN_NONE;
    }
    return PyBytes_FromStringAndSize(out.data, (Py_ssize_t)out.len);
}

static PyMethodDef methods[] = {
    {"render", render, METH_O,
     "render(trade) -> bytes | None\n\nThe published JSON of a HotTrade, or None when the "
     "trade is outside the common case (the Python path renders it then)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_hotjson",
    .m_doc = "Hot-path trade rendering (see feedhandler.upbit.hot.trade_to_json).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__hotjson(void)
{
    return PyModule_Create(&module_def);
}
