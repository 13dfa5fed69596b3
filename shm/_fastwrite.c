/*
 * Seqlocked record stores for shm.writer, in C.
 *
 * Each store builds a whole record from a decoded message in a local buffer and then
 * publishes it with the write protocol of shm/writer.py (ring slot seq odd, payload,
 * seq even; the symbol's latest slot the same way; latest index; head). It returns
 * True when the record was stored, and False -- having written nothing -- for anything
 * outside the common case (a value of an unexpected type, an enum string outside its
 * map, an integer beyond 64 bits, an object whose fields are not plain slots); the
 * Python writer then stores the message itself, with the same bytes as a result.
 *
 * Message fields are read straight from their slots (_slots.h: read_fields).
 * Everything runs with the GIL held and calls no Python code, so a store is never
 * interleaved with another Python thread. The record layout mirrors shm/layout.py;
 * shm/native.py checks the constants below against it before using this module.
 */
#include "_slots.h"
#include <math.h>
#include <stdint.h>
#include <string.h>

#define MAX_LEVELS 30
#define TICKER_FLOATS 18
#define TICKER_RECORD_SIZE (64 + 8 * TICKER_FLOATS)
#define ORDERBOOK_LEVELS_OFF 72
#define ORDERBOOK_RECORD_SIZE (ORDERBOOK_LEVELS_OFF + 32 * MAX_LEVELS)
#define HEAD_WORD 9

/* ------------------------------------------------------------------ field offsets */

enum {
    TK_SIM_NS, TK_TIMESTAMP, TK_CHANGE, TK_ASK_BID, TK_MARKET_STATE, TK_MARKET_WARNING,
    TK_SUSPENDED, TK_STREAM_TYPE, TK_TRADE_TIMESTAMP, TK_FLOATS,
    TK_FIELDS = TK_FLOATS + TICKER_FLOATS
};
static const char *ticker_names[TK_FIELDS] = {
    "sim_ns", "timestamp", "change", "ask_bid", "market_state", "market_warning",
    "is_trading_suspended", "stream_type", "trade_timestamp",
    /* shm.layout.TICKER_FLOAT_FIELDS, in order */
    "opening_price", "high_price", "low_price", "trade_price", "prev_closing_price",
    "change_price", "signed_change_price", "change_rate", "signed_change_rate",
    "trade_volume", "acc_trade_volume", "acc_trade_volume_24h", "acc_trade_price",
    "acc_trade_price_24h", "acc_ask_volume", "acc_bid_volume", "highest_52_week_price",
    "lowest_52_week_price",
};

enum {
    OB_SIM_NS, OB_TIMESTAMP, OB_STREAM_TYPE, OB_TOTAL_ASK, OB_TOTAL_BID, OB_LEVEL, OB_UNITS,
    OB_FIELDS
};
static const char *orderbook_names[OB_FIELDS] = {
    "sim_ns", "timestamp", "stream_type", "total_ask_size", "total_bid_size", "level",
    "orderbook_units",
};

#define UNIT_FIELDS 4
/* shm.layout.LEVEL_FIELDS, in order */
static const char *unit_names[UNIT_FIELDS] = {"ask_price", "bid_price", "ask_size", "bid_size"};

_Static_assert(TK_FIELDS <= MAX_SLOT_FIELDS, "too many ticker fields for _slots.h");
static SlotCache ticker_cache = {.names = ticker_names, .n = TK_FIELDS};
static SlotCache orderbook_cache = {.names = orderbook_names, .n = OB_FIELDS};
static SlotCache unit_cache = {.names = unit_names, .n = UNIT_FIELDS};

/* ---------------------------------------------------------------- value converters */

/* A float field: float or int as double, None as NaN. 0 if the value is anything else. */
static inline int
as_double(PyObject *v, double *out)
{
    if (PyFloat_CheckExact(v)) {
        *out = PyFloat_AS_DOUBLE(v);
        return 1;
    }
    if (v == Py_None) {
        *out = Py_NAN;
        return 1;
    }
    if (PyLong_CheckExact(v)) {
        double d = PyLong_AsDouble(v);
        if (d == -1.0 && PyErr_Occurred()) {
            PyErr_Clear();
            return 0;
        }
        *out = d;
        return 1;
    }
    return 0;
}

/* An integer field: a 64-bit int, None as 0. 0 if the value is anything else. */
static inline int
as_int64(PyObject *v, int64_t *out)
{
    if (PyLong_CheckExact(v)) {
        int overflow = 0;
        long long n = PyLong_AsLongLongAndOverflow(v, &overflow);
        if (overflow || (n == -1 && PyErr_Occurred())) {
            PyErr_Clear();
            return 0;
        }
        *out = (int64_t)n;
        return 1;
    }
    if (v == Py_None) {
        *out = 0;
        return 1;
    }
    return 0;
}

/* An enum field: the code ``map`` gives for a str, bool or None. 0 if it has none. */
static inline int
as_code(PyObject *map, PyObject *v, long *out)
{
    if (!(PyUnicode_CheckExact(v) || v == Py_None || PyBool_Check(v))) {
        return 0;
    }
    PyObject *code = PyDict_GetItemWithError(map, v); /* borrowed */
    if (code == NULL || !PyLong_CheckExact(code)) {
        PyErr_Clear();
        return 0;
    }
    long n = PyLong_AsLong(code);
    if (n == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    *out = n;
    return 1;
}

static inline void
put_u64(uint8_t *rec, size_t at, uint64_t v)
{
    memcpy(rec + at, &v, 8);
}

static inline void
put_i64(uint8_t *rec, size_t at, int64_t v)
{
    memcpy(rec + at, &v, 8);
}

static inline void
put_f64(uint8_t *rec, size_t at, double v)
{
    memcpy(rec + at, &v, 8);
}

/* ------------------------------------------------------------------------ publish */

typedef struct {
    uint8_t *base;
    Py_ssize_t len;
} Segment;

/* The writable bytes of the segment's memoryview; raises if it is anything else. */
static int
segment_of(PyObject *view, Segment *seg)
{
    if (!PyMemoryView_Check(view)) {
        PyErr_SetString(PyExc_TypeError, "segment must be a memoryview");
        return 0;
    }
    Py_buffer *buffer = PyMemoryView_GET_BUFFER(view);
    if (buffer->readonly || buffer->buf == NULL || !PyBuffer_IsContiguous(buffer, 'C')) {
        PyErr_SetString(PyExc_ValueError, "segment view must be writable and contiguous");
        return 0;
    }
    seg->base = (uint8_t *)buffer->buf;
    seg->len = buffer->len;
    return 1;
}

static int
in_segment(const Segment *seg, Py_ssize_t at, Py_ssize_t size)
{
    if (at < 0 || at % 8 || size > seg->len || at > seg->len - size) {
        PyErr_Format(PyExc_ValueError,
                     "offset %zd (+%zd bytes) is outside the %zd-byte segment or unaligned",
                     at, size, seg->len);
        return 0;
    }
    return 1;
}

static inline void
store_seqlocked(uint8_t *record, const uint8_t *payload, size_t size, uint64_t odd)
{
    uint64_t *seq = (uint64_t *)record;
    __atomic_store_n(seq, odd, __ATOMIC_RELAXED);
    /* Readers must see the odd seq before any byte of the new payload. */
    __atomic_thread_fence(__ATOMIC_RELEASE);
    memcpy(record + 8, payload + 8, size - 8);
    __atomic_store_n(seq, odd + 1, __ATOMIC_RELEASE);
}

/* Ring slot, latest slot, latest index, head: the write protocol of shm/writer.py. */
static void
publish(const Segment *seg, Py_ssize_t slot, Py_ssize_t latest_word, Py_ssize_t index_word,
        uint64_t feed_seq, const uint8_t *payload, size_t size)
{
    uint64_t odd = 2 * feed_seq - 1;
    store_seqlocked(seg->base + slot, payload, size, odd);
    store_seqlocked(seg->base + latest_word * 8, payload, size, odd);
    __atomic_store_n((uint64_t *)seg->base + index_word, feed_seq, __ATOMIC_RELEASE);
    __atomic_store_n((uint64_t *)seg->base + HEAD_WORD, feed_seq, __ATOMIC_RELEASE);
}

typedef struct {
    Segment seg;
    Py_ssize_t slot, latest_word, index_word;
    uint64_t feed_seq;
    int64_t recv_ns;
    unsigned long symbol;
    PyObject *msg;
} StoreArgs;

/* change, ask_bid, market_state, market_warning, trading_suspended, stream_type */
static PyObject *enum_maps[6];

/* (segment, slot, latest_word, index_word, feed_seq, recv_ns, symbol, msg) */
static int
parse_store_args(PyObject *const *args, Py_ssize_t nargs, size_t record_size, StoreArgs *out)
{
    if (nargs != 8) {
        PyErr_Format(PyExc_TypeError, "expected 8 arguments, got %zd", nargs);
        return 0;
    }
    if (enum_maps[0] == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "set_enum_maps() was not called");
        return 0;
    }
    if (!segment_of(args[0], &out->seg)) {
        return 0;
    }
    out->slot = PyLong_AsSsize_t(args[1]);
    out->latest_word = PyLong_AsSsize_t(args[2]);
    out->index_word = PyLong_AsSsize_t(args[3]);
    out->feed_seq = PyLong_AsUnsignedLongLong(args[4]);
    out->recv_ns = PyLong_AsLongLong(args[5]);
    out->symbol = PyLong_AsUnsignedLong(args[6]);
    if (PyErr_Occurred()) {
        return 0;
    }
    if (out->feed_seq == 0 || out->symbol > UINT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "feed_seq must be >= 1 and symbol a uint32");
        return 0;
    }
    if (out->latest_word > PY_SSIZE_T_MAX / 8 || out->index_word > PY_SSIZE_T_MAX / 8) {
        PyErr_SetString(PyExc_ValueError, "word index out of range");
        return 0;
    }
    if (!in_segment(&out->seg, out->slot, (Py_ssize_t)record_size) ||
        !in_segment(&out->seg, out->latest_word * 8, (Py_ssize_t)record_size) ||
        !in_segment(&out->seg, out->index_word * 8, 8) ||
        !in_segment(&out->seg, HEAD_WORD * 8, 8)) {
        return 0;
    }
    out->msg = args[7];
    return 1;
}

static void
put_common(uint8_t *rec, const StoreArgs *a, int64_t origin_ns, int64_t timestamp)
{
    put_u64(rec, 8, a->feed_seq);
    put_i64(rec, 16, a->recv_ns);
    put_i64(rec, 24, origin_ns);
    put_i64(rec, 32, timestamp);
    uint32_t symbol = (uint32_t)a->symbol;
    memcpy(rec + 40, &symbol, 4);
}

/* -------------------------------------------------------------------------- ticker */

static PyObject *
store_ticker(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    StoreArgs a;
    if (!parse_store_args(args, nargs, TICKER_RECORD_SIZE, &a)) {
        return NULL;
    }
    PyObject *values[TK_FIELDS];
    if (!read_fields(&ticker_cache, a.msg, values)) {
        Py_RETURN_FALSE;
    }
    uint8_t rec[TICKER_RECORD_SIZE];
    memset(rec, 0, sizeof rec);
    int64_t origin_ns, timestamp, trade_timestamp;
    if (!as_int64(values[TK_SIM_NS], &origin_ns) || !as_int64(values[TK_TIMESTAMP], &timestamp) ||
        !as_int64(values[TK_TRADE_TIMESTAMP], &trade_timestamp)) {
        Py_RETURN_FALSE;
    }
    put_common(rec, &a, origin_ns, timestamp);
    static const int enum_fields[6] = {TK_CHANGE, TK_ASK_BID, TK_MARKET_STATE,
                                       TK_MARKET_WARNING, TK_SUSPENDED, TK_STREAM_TYPE};
    for (int e = 0; e < 6; e++) {
        long code;
        if (!as_code(enum_maps[e], values[enum_fields[e]], &code)) {
            Py_RETURN_FALSE;
        }
        if (e == 4) {
            if (code < INT8_MIN || code > INT8_MAX) {
                Py_RETURN_FALSE;
            }
            int8_t c = (int8_t)code;
            memcpy(rec + 44 + e, &c, 1);
        }
        else {
            if (code < 0 || code > UINT8_MAX) {
                Py_RETURN_FALSE;
            }
            rec[44 + e] = (uint8_t)code;
        }
    }
    put_i64(rec, 56, trade_timestamp);
    for (int i = 0; i < TICKER_FLOATS; i++) {
        double d;
        if (!as_double(values[TK_FLOATS + i], &d)) {
            Py_RETURN_FALSE;
        }
        put_f64(rec, 64 + 8 * (size_t)i, d);
    }
    publish(&a.seg, a.slot, a.latest_word, a.index_word, a.feed_seq, rec, sizeof rec);
    Py_RETURN_TRUE;
}

static PyObject *
set_enum_maps(PyObject *module, PyObject *args)
{
    PyObject *maps[6];
    if (!PyArg_ParseTuple(args, "O!O!O!O!O!O!", &PyDict_Type, &maps[0], &PyDict_Type, &maps[1],
                          &PyDict_Type, &maps[2], &PyDict_Type, &maps[3], &PyDict_Type,
                          &maps[4], &PyDict_Type, &maps[5])) {
        return NULL;
    }
    for (int i = 0; i < 6; i++) {
        Py_INCREF(maps[i]);
        Py_XSETREF(enum_maps[i], maps[i]);
    }
    Py_RETURN_NONE;
}

/* ----------------------------------------------------------------------- orderbook */

/* The four values of one level from a level struct or a 4-tuple; 0 if neither. */
static int
unit_values(PyObject *unit, double *out)
{
    PyObject *values[UNIT_FIELDS];
    if (PyTuple_CheckExact(unit)) {
        if (PyTuple_GET_SIZE(unit) != UNIT_FIELDS) {
            return 0;
        }
        for (int j = 0; j < UNIT_FIELDS; j++) {
            values[j] = PyTuple_GET_ITEM(unit, j);
        }
    }
    else if (!read_fields(&unit_cache, unit, values)) {
        return 0;
    }
    for (int j = 0; j < UNIT_FIELDS; j++) {
        if (!as_double(values[j], &out[j])) {
            return 0;
        }
    }
    return 1;
}

static PyObject *
store_orderbook(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    StoreArgs a;
    if (!parse_store_args(args, nargs, ORDERBOOK_RECORD_SIZE, &a)) {
        return NULL;
    }
    PyObject *values[OB_FIELDS];
    if (!read_fields(&orderbook_cache, a.msg, values)) {
        Py_RETURN_FALSE;
    }
    PyObject *units = values[OB_UNITS];
    if (!(PyList_CheckExact(units) || PyTuple_CheckExact(units))) {
        Py_RETURN_FALSE;
    }
    Py_ssize_t n_levels = PySequence_Fast_GET_SIZE(units);
    if (n_levels > MAX_LEVELS) {
        n_levels = MAX_LEVELS; /* Upbit never sends more; the Python writer drops them too */
    }
    uint8_t rec[ORDERBOOK_RECORD_SIZE];
    memset(rec, 0, sizeof rec);
    int64_t origin_ns, timestamp;
    long stream_type;
    double totals[3];
    if (!as_int64(values[OB_SIM_NS], &origin_ns) || !as_int64(values[OB_TIMESTAMP], &timestamp) ||
        !as_code(enum_maps[5], values[OB_STREAM_TYPE], &stream_type) || stream_type < 0 ||
        stream_type > UINT8_MAX || !as_double(values[OB_TOTAL_ASK], &totals[0]) ||
        !as_double(values[OB_TOTAL_BID], &totals[1]) || !as_double(values[OB_LEVEL], &totals[2])) {
        Py_RETURN_FALSE;
    }
    put_common(rec, &a, origin_ns, timestamp);
    uint16_t levels = (uint16_t)n_levels;
    memcpy(rec + 44, &levels, 2);
    rec[46] = (uint8_t)stream_type;
    for (int i = 0; i < 3; i++) {
        put_f64(rec, 48 + 8 * (size_t)i, totals[i]);
    }
    PyObject **items = PySequence_Fast_ITEMS(units);
    for (Py_ssize_t i = 0; i < n_levels; i++) {
        double level[UNIT_FIELDS];
        if (!unit_values(items[i], level)) {
            Py_RETURN_FALSE;
        }
        memcpy(rec + ORDERBOOK_LEVELS_OFF + 32 * (size_t)i, level, sizeof level);
    }
    publish(&a.seg, a.slot, a.latest_word, a.index_word, a.feed_seq, rec, sizeof rec);
    Py_RETURN_TRUE;
}

/* -------------------------------------------------------------------------- module */

static PyMethodDef methods[] = {
    {"store_ticker", (PyCFunction)(void (*)(void))store_ticker, METH_FASTCALL,
     "store_ticker(segment, slot, latest_word, index_word, feed_seq, recv_ns, symbol, msg)"
     " -> bool\n\nStore and publish one ticker record; False (nothing written) if the "
     "message is outside the common case."},
    {"store_orderbook", (PyCFunction)(void (*)(void))store_orderbook, METH_FASTCALL,
     "store_orderbook(segment, slot, latest_word, index_word, feed_seq, recv_ns, symbol, msg)"
     " -> bool\n\nStore and publish one order-book record; False (nothing written) if the "
     "message is outside the common case."},
    {"set_enum_maps", set_enum_maps, METH_VARARGS,
     "set_enum_maps(change, ask_bid, market_state, market_warning, trading_suspended, "
     "stream_type): the value -> code dicts of shm.layout."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_fastwrite",
    .m_doc = "Seqlocked shm record stores (see shm/native.py).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__fastwrite(void)
{
    PyObject *module = PyModule_Create(&module_def);
    if (module == NULL) {
        return NULL;
    }
    if (PyModule_AddIntConstant(module, "TICKER_RECORD_SIZE", TICKER_RECORD_SIZE) < 0 ||
        PyModule_AddIntConstant(module, "ORDERBOOK_RECORD_SIZE", ORDERBOOK_RECORD_SIZE) < 0 ||
        PyModule_AddIntConstant(module, "MAX_LEVELS", MAX_LEVELS) < 0 ||
        PyModule_AddIntConstant(module, "HEAD_WORD", HEAD_WORD) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    PyObject *names = PyTuple_New(TICKER_FLOATS);
    if (names == NULL) {
        Py_DECREF(module);
        return NULL;
    }
    for (int i = 0; i < TICKER_FLOATS; i++) {
        PyObject *name = PyUnicode_FromString(ticker_names[TK_FLOATS + i]);
        if (name == NULL) {
            Py_DECREF(names);
            Py_DECREF(module);
            return NULL;
        }
        PyTuple_SET_ITEM(names, i, name);
    }
    if (PyModule_AddObject(module, "TICKER_FLOAT_FIELDS", names) < 0) {
        Py_DECREF(names);
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
