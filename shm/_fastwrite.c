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
#include "_notify.h"
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>

#define MAX_LEVELS 30
#define TICKER_FLOATS 18
#define TICKER_RECORD_SIZE (64 + 8 * TICKER_FLOATS)
#define ORDERBOOK_LEVELS_OFF 72
#define ORDERBOOK_RECORD_SIZE (ORDERBOOK_LEVELS_OFF + 32 * MAX_LEVELS)

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

/* The ticker's enum fields, in the order of set_enum_maps and of the record's codes. */
static const int ticker_enum_fields[6] = {TK_CHANGE,         TK_ASK_BID,   TK_MARKET_STATE,
                                          TK_MARKET_WARNING, TK_SUSPENDED, TK_STREAM_TYPE};

_Static_assert(TK_FIELDS <= MAX_SLOT_FIELDS, "too many ticker fields for _slots.h");
_Static_assert(TK_FIELDS + 9 <= 64, "ticker JSON keys must fit a 64-bit set");
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
    publish_head_and_wake(seg->base, feed_seq);
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

/* What every store checks first: its argument count, the enum maps, the segment. */
static int
store_args_start(PyObject *const *args, Py_ssize_t nargs, Py_ssize_t expected, Segment *seg)
{
    if (nargs != expected) {
        PyErr_Format(PyExc_TypeError, "expected %zd arguments, got %zd", expected, nargs);
        return 0;
    }
    if (enum_maps[0] == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "set_enum_maps() was not called");
        return 0;
    }
    return segment_of(args[0], seg);
}

/* The record's symbol and words are in range, and its ring slot, latest slot, index
 * word and the header words of the head's publication all lie in the segment. */
static int
target_in_segment(const StoreArgs *a, Py_ssize_t record_size)
{
    if (a->symbol > UINT32_MAX || a->latest_word > PY_SSIZE_T_MAX / 8 ||
        a->index_word > PY_SSIZE_T_MAX / 8) {
        PyErr_SetString(PyExc_ValueError, "symbol (a uint32) or word index out of range");
        return 0;
    }
    return in_segment(&a->seg, a->slot, record_size) &&
           in_segment(&a->seg, a->latest_word * 8, record_size) &&
           in_segment(&a->seg, a->index_word * 8, 8) &&
           in_segment(&a->seg, 0, NOTIFY_HEADER_SIZE);
}

/* (segment, slot, latest_word, index_word, feed_seq, recv_ns, symbol, msg) */
static int
parse_store_args(PyObject *const *args, Py_ssize_t nargs, size_t record_size, StoreArgs *out)
{
    if (!store_args_start(args, nargs, 8, &out->seg)) {
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
    if (out->feed_seq == 0) {
        PyErr_SetString(PyExc_ValueError, "feed_seq must be >= 1");
        return 0;
    }
    if (!target_in_segment(out, (Py_ssize_t)record_size)) {
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

/* A whole ticker record; 0 if an enum code does not fit its byte. ``codes`` are the
 * codes of change, ask_bid, market_state, market_warning, is_trading_suspended (int8)
 * and stream_type; ``floats`` follow shm.layout.TICKER_FLOAT_FIELDS. */
static int
put_ticker_record(uint8_t *rec, const StoreArgs *a, int64_t origin_ns, int64_t timestamp,
                  int64_t trade_timestamp, const long *codes, const double *floats)
{
    put_common(rec, a, origin_ns, timestamp);
    for (int e = 0; e < 6; e++) {
        long code = codes[e];
        if (e == 4) {
            if (code < INT8_MIN || code > INT8_MAX) {
                return 0;
            }
            int8_t c = (int8_t)code;
            memcpy(rec + 44 + e, &c, 1);
        }
        else {
            if (code < 0 || code > UINT8_MAX) {
                return 0;
            }
            rec[44 + e] = (uint8_t)code;
        }
    }
    put_i64(rec, 56, trade_timestamp);
    for (int i = 0; i < TICKER_FLOATS; i++) {
        put_f64(rec, 64 + 8 * (size_t)i, floats[i]);
    }
    return 1;
}

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
    long codes[6];
    for (int e = 0; e < 6; e++) {
        if (!as_code(enum_maps[e], values[ticker_enum_fields[e]], &codes[e])) {
            Py_RETURN_FALSE;
        }
    }
    double floats[TICKER_FLOATS];
    for (int i = 0; i < TICKER_FLOATS; i++) {
        if (!as_double(values[TK_FLOATS + i], &floats[i])) {
            Py_RETURN_FALSE;
        }
    }
    if (!put_ticker_record(rec, &a, origin_ns, timestamp, trade_timestamp, codes, floats)) {
        Py_RETURN_FALSE;
    }
    publish(&a.seg, a.slot, a.latest_word, a.index_word, a.feed_seq, rec, sizeof rec);
    Py_RETURN_TRUE;
}

/* The enum maps as C tables, for frames parsed here: names are bytes, not str. */
#define ENUM_NAMES 8
typedef struct {
    char name[24];
    size_t len;
    long code;
} EnumName;

typedef struct {
    EnumName names[ENUM_NAMES];
    int n;
    int has_none, has_true, has_false;
    long none_code, true_code, false_code;
} EnumTable;

static EnumTable enum_tables[6];

static int
enum_table_of(PyObject *map, EnumTable *table)
{
    memset(table, 0, sizeof *table);
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    while (PyDict_Next(map, &pos, &key, &value)) {
        long code = PyLong_AsLong(value);
        if (code == -1 && PyErr_Occurred()) {
            return 0;
        }
        if (key == Py_None) {
            table->has_none = 1;
            table->none_code = code;
        }
        else if (key == Py_True) {
            table->has_true = 1;
            table->true_code = code;
        }
        else if (key == Py_False) {
            table->has_false = 1;
            table->false_code = code;
        }
        else if (PyUnicode_Check(key)) {
            Py_ssize_t len;
            const char *name = PyUnicode_AsUTF8AndSize(key, &len);
            if (name == NULL) {
                return 0;
            }
            if (table->n == ENUM_NAMES || len >= (Py_ssize_t)sizeof table->names[0].name) {
                PyErr_SetString(PyExc_ValueError, "enum map too large for the C tables");
                return 0;
            }
            EnumName *entry = &table->names[table->n++];
            memcpy(entry->name, name, (size_t)len);
            entry->len = (size_t)len;
            entry->code = code;
        }
        else {
            PyErr_SetString(PyExc_TypeError, "enum map keys must be str, bool or None");
            return 0;
        }
    }
    return 1;
}

/* The code of a string value (its bytes), as the map gives it for the same str. */
static int
enum_code(const EnumTable *table, const char *text, Py_ssize_t n, long *code)
{
    for (int i = 0; i < table->n; i++) {
        if (table->names[i].len == (size_t)n && memcmp(table->names[i].name, text, (size_t)n) == 0) {
            *code = table->names[i].code;
            return 1;
        }
    }
    return 0;
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
    EnumTable tables[6];
    for (int i = 0; i < 6; i++) {
        if (!enum_table_of(maps[i], &tables[i])) {
            return NULL;
        }
    }
    for (int i = 0; i < 6; i++) {
        Py_INCREF(maps[i]);
        Py_XSETREF(enum_maps[i], maps[i]);
        enum_tables[i] = tables[i];
    }
    Py_RETURN_NONE;
}

/* ----------------------------------------------------------------------- orderbook */

/* Everything of an order-book record but its levels. */
static void
put_orderbook_head(uint8_t *rec, const StoreArgs *a, int64_t origin_ns, int64_t timestamp,
                   Py_ssize_t n_levels, long stream_type, const double *totals)
{
    put_common(rec, a, origin_ns, timestamp);
    uint16_t levels = (uint16_t)n_levels;
    memcpy(rec + 44, &levels, 2);
    rec[46] = (uint8_t)stream_type;
    for (int i = 0; i < 3; i++) {
        put_f64(rec, 48 + 8 * (size_t)i, totals[i]);
    }
}

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
    put_orderbook_head(rec, &a, origin_ns, timestamp, n_levels, stream_type, totals);
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

/* ------------------------------------------------------- order book from its JSON */

/*
 * store_orderbook_json parses a DEFAULT-format order-book frame itself and stores its
 * record without building the decoded message (3.6 us of msgspec objects for a
 * 15-level book). It accepts only what the strict decoder accepts and reads the same
 * way: an object with the keys of feedhandler.upbit.hot.HotOrderbook, each at most
 * once, "type" "orderbook", the required keys present, numbers where floats or ints are
 * due (an int key refuses a fraction or exponent, as msgspec does), null only where
 * the field is optional. Numbers are rounded correctly (json_double), as msgspec
 * rounds them. Anything else -- an unknown key (schema drift, counted by the Python
 * decoder), a string with escapes or non-ASCII bytes, a number out of range, a code
 * without a symbol -- returns False with nothing written, and the caller decodes the
 * frame and stores it the usual way.
 */

typedef struct {
    const char *p;
    const char *end;
} Json;

static inline void
skip_space(Json *j)
{
    while (j->p < j->end && (*j->p == ' ' || *j->p == '\n' || *j->p == '\r' || *j->p == '\t')) {
        j->p++;
    }
}

static inline int
take(Json *j, char c)
{
    skip_space(j);
    if (j->p < j->end && *j->p == c) {
        j->p++;
        return 1;
    }
    return 0;
}

/* An object key: its bytes up to the next quote. Only exact matches with known names
 * are used, and none holds a backslash, so a key with an escape never matches and the
 * frame is left to the Python path. */
static inline int
key_string(Json *j, const char **text, Py_ssize_t *n)
{
    if (!take(j, '"')) {
        return 0;
    }
    const char *quote = memchr(j->p, '"', (size_t)(j->end - j->p));
    if (quote == NULL) {
        return 0;
    }
    *text = j->p;
    *n = quote - j->p;
    j->p = quote + 1;
    return 1;
}

/* A string of printable ASCII without escapes: its bytes in [*text, *text + *n). */
static int
plain_string(Json *j, const char **text, Py_ssize_t *n)
{
    if (!take(j, '"')) {
        return 0;
    }
    const char *start = j->p;
    while (j->p < j->end) {
        unsigned char c = (unsigned char)*j->p;
        if (c == '"') {
            *text = start;
            *n = j->p - start;
            j->p++;
            return 1;
        }
        if (c == '\\' || c < 0x20 || c >= 0x80) {
            return 0;
        }
        j->p++;
    }
    return 0;
}

static inline int
take_literal(Json *j, const char *word, size_t n)
{
    skip_space(j);
    if ((size_t)(j->end - j->p) >= n && memcmp(j->p, word, n) == 0) {
        j->p += n;
        return 1;
    }
    return 0;
}

/* A scanned JSON number (RFC 8259 grammar). */
typedef struct {
    const char *text;
    size_t len;
    int integral;      /* no fraction and no exponent */
    int negative;
    uint64_t mantissa; /* its significant digits, if there are at most 19 */
    int digits;        /* significant digits (leading zeros skipped) */
    long exp10;        /* value = mantissa * 10^exp10 */
} Number;

static int
scan_number(Json *j, Number *n)
{
    skip_space(j);
    /* Locals, not n's fields: stores through n could alias the text being read, and
     * the compiler would write them back after every digit. */
    const char *p = j->p, *end = j->end, *start = p;
    int integral = 1, negative = 0, digits = 0;
    uint64_t mantissa = 0;
    long exp10 = 0;
    if (p < end && *p == '-') {
        negative = 1;
        p++;
    }
    if (p < end && *p == '0') {
        p++;
    }
    else if (p < end && *p >= '1' && *p <= '9') {
        while (p < end && *p >= '0' && *p <= '9') {
            if (digits < 19) {
                mantissa = mantissa * 10 + (uint64_t)(*p - '0');
            }
            else {
                exp10++; /* beyond 19 digits: only the strtod path is exact */
            }
            digits++;
            p++;
        }
    }
    else {
        return 0;
    }
    if (p < end && *p == '.') {
        p++;
        if (!(p < end && *p >= '0' && *p <= '9')) {
            return 0;
        }
        int zeros = 0; /* fraction zeros not yet applied: trailing ones never are */
        while (p < end && *p >= '0' && *p <= '9') {
            if (*p == '0') {
                if (digits == 0) {
                    exp10--; /* a leading zero of the fraction */
                }
                else {
                    zeros++;
                }
            }
            else {
                for (; zeros > 0; zeros--) {
                    if (digits < 19) {
                        mantissa *= 10;
                        exp10--;
                    }
                    digits++;
                }
                if (digits < 19) {
                    mantissa = mantissa * 10 + (uint64_t)(*p - '0');
                    exp10--;
                }
                digits++;
            }
            p++;
        }
        integral = 0;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        p++;
        int minus = 0;
        if (p < end && (*p == '+' || *p == '-')) {
            minus = *p == '-';
            p++;
        }
        if (!(p < end && *p >= '0' && *p <= '9')) {
            return 0;
        }
        long e = 0;
        while (p < end && *p >= '0' && *p <= '9') {
            if (e < 100000) {
                e = e * 10 + (*p - '0');
            }
            p++;
        }
        exp10 += minus ? -e : e;
        integral = 0;
    }
    n->text = start;
    n->len = (size_t)(p - start);
    n->integral = integral;
    n->negative = negative;
    n->mantissa = mantissa;
    n->digits = digits;
    n->exp10 = exp10;
    j->p = p;
    return 1;
}

static const double exact_powers[] = {
    1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,  1e8,  1e9,  1e10, 1e11,
    1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
};

/* A float field: any JSON number, finite and not rounded to or from the subnormals.
 * With at most 2^53 as its digits and 10^-22..10^22 as its scale, the value is one
 * IEEE multiplication or division of two exact doubles, so correctly rounded (Clinger's
 * fast path); anything else goes through strtod, which also rounds correctly.
 * msgspec reads an integer literal as an int and converts it, so "-0" is +0.0 there;
 * integers of more than 18 digits are left to it. */
static int
json_double(Json *j, double *out)
{
    Number n;
    if (!scan_number(j, &n)) {
        return 0;
    }
    if (n.integral && n.digits > 18) {
        return 0;
    }
    double d;
    if (n.digits <= 19 && n.mantissa <= (UINT64_C(1) << 53) && n.exp10 >= -22 &&
        n.exp10 <= 22) {
        d = (double)n.mantissa;
        d = n.exp10 < 0 ? d / exact_powers[-n.exp10] : d * exact_powers[n.exp10];
        if (n.negative && !(n.integral && d == 0.0)) {
            d = -d;
        }
    }
    else {
        char text[64];
        if (n.len >= sizeof text) {
            return 0;
        }
        memcpy(text, n.text, n.len);
        text[n.len] = '\0';
        char *stop;
        errno = 0;
        d = strtod(text, &stop);
        if (*stop != '\0' || errno != 0) {
            return 0;
        }
        if (n.integral && d == 0.0) {
            d = 0.0;
        }
    }
    if (!isfinite(d)) {
        return 0;
    }
    *out = d;
    return 1;
}

/* An int field: a JSON integer within int64. */
static int
json_int64(Json *j, int64_t *out)
{
    Number n;
    if (!scan_number(j, &n) || !n.integral || n.digits > 19) {
        return 0;
    }
    uint64_t limit = n.negative ? (UINT64_C(1) << 63) : (UINT64_C(1) << 63) - 1;
    if (n.digits == 19 && n.mantissa > limit) {
        return 0;
    }
    *out = n.negative ? (int64_t)(0 - n.mantissa) : (int64_t)n.mantissa;
    return 1;
}

/* One {"ask_price":..,"bid_price":..,"ask_size":..,"bid_size":..} in any key order. */
/* The index of ``key`` among ``names`` (``guess`` first: keys come in a fixed order
 * from the exchange), or -1. */
static inline int
key_index(const char *key, Py_ssize_t n, const char *const *names, const size_t *lengths, int count,
          int guess)
{
    if (guess < count && (size_t)n == lengths[guess] && memcmp(key, names[guess], (size_t)n) == 0) {
        return guess;
    }
    for (int k = 0; k < count; k++) {
        if ((size_t)n == lengths[k] && memcmp(key, names[k], (size_t)n) == 0) {
            return k;
        }
    }
    return -1;
}

/* strlen of the key names, set when the module is loaded */
static size_t unit_name_lengths[UNIT_FIELDS];

static int
json_unit(Json *j, double *level)
{
    if (!take(j, '{')) {
        return 0;
    }
    unsigned seen = 0;
    int next = 0;
    do {
        const char *key;
        Py_ssize_t n;
        if (!key_string(j, &key, &n) || !take(j, ':')) {
            return 0;
        }
        int field = key_index(key, n, unit_names, unit_name_lengths, UNIT_FIELDS, next);
        next = field + 1;
        if (field < 0 || (seen & (1u << field)) || !json_double(j, &level[field])) {
            return 0;
        }
        seen |= 1u << field;
    } while (take(j, ','));
    return take(j, '}') && seen == (1u << UNIT_FIELDS) - 1;
}

enum {
    OJ_TYPE, OJ_CODE, OJ_TIMESTAMP, OJ_TOTAL_ASK, OJ_TOTAL_BID, OJ_UNITS, OJ_STREAM_TYPE,
    OJ_LEVEL, OJ_SIM_NS, OJ_KEYS
};
static const char *orderbook_json_keys[OJ_KEYS] = {
    "type", "code", "timestamp", "total_ask_size", "total_bid_size", "orderbook_units",
    "stream_type", "level", "sim_ns",
};
static size_t orderbook_json_key_lengths[OJ_KEYS];
#define OJ_REQUIRED                                                                            \
    ((1u << OJ_TYPE) | (1u << OJ_CODE) | (1u << OJ_TIMESTAMP) | (1u << OJ_TOTAL_ASK) |         \
     (1u << OJ_TOTAL_BID) | (1u << OJ_UNITS))

typedef struct {
    const char *code;
    Py_ssize_t code_len;
    int64_t timestamp, sim_ns;
    double totals[3]; /* total_ask_size, total_bid_size, level */
    const char *stream_type;
    Py_ssize_t stream_type_len; /* -1: null or absent */
    Py_ssize_t n_levels;        /* stored levels (at most MAX_LEVELS) */
    double levels[MAX_LEVELS][UNIT_FIELDS];
} JsonBook;

static int
json_orderbook(Json *j, JsonBook *book)
{
    book->sim_ns = 0;
    book->totals[2] = Py_NAN;
    book->stream_type_len = -1;
    book->n_levels = 0;
    if (!take(j, '{')) {
        return 0;
    }
    unsigned seen = 0;
    int next = 0;
    do {
        const char *key, *text;
        Py_ssize_t n;
        if (!key_string(j, &key, &n) || !take(j, ':')) {
            return 0;
        }
        int field = key_index(key, n, orderbook_json_keys, orderbook_json_key_lengths, OJ_KEYS,
                              next);
        next = field + 1;
        if (field < 0 || (seen & (1u << field))) {
            return 0;
        }
        seen |= 1u << field;
        int ok = 0;
        switch (field) {
        case OJ_TYPE:
            ok = plain_string(j, &text, &n) && n == 9 && memcmp(text, "orderbook", 9) == 0;
            break;
        case OJ_CODE:
            ok = plain_string(j, &book->code, &book->code_len);
            break;
        case OJ_TIMESTAMP:
            ok = json_int64(j, &book->timestamp);
            break;
        case OJ_SIM_NS:
            ok = json_int64(j, &book->sim_ns);
            break;
        case OJ_TOTAL_ASK:
        case OJ_TOTAL_BID:
            ok = json_double(j, &book->totals[field - OJ_TOTAL_ASK]);
            break;
        case OJ_LEVEL:
            ok = take_literal(j, "null", 4) || json_double(j, &book->totals[2]);
            break;
        case OJ_STREAM_TYPE:
            ok = take_literal(j, "null", 4) ||
                 plain_string(j, &book->stream_type, &book->stream_type_len);
            break;
        case OJ_UNITS:
            if (!take(j, '[')) {
                return 0;
            }
            if (take(j, ']')) {
                ok = 1;
                break;
            }
            do {
                double spare[UNIT_FIELDS];
                double *level = book->n_levels < MAX_LEVELS ? book->levels[book->n_levels] : spare;
                if (!json_unit(j, level)) {
                    return 0;
                }
                if (book->n_levels < MAX_LEVELS) {
                    book->n_levels++; /* the Python writer drops levels beyond 30 too */
                }
            } while (take(j, ','));
            ok = take(j, ']');
            break;
        }
        if (!ok) {
            return 0;
        }
    } while (take(j, ','));
    if (!take(j, '}')) {
        return 0;
    }
    skip_space(j);
    return j->p == j->end && (seen & OJ_REQUIRED) == OJ_REQUIRED;
}

/* The symbol and slots of ``code`` from ``targets`` (code -> (symbol, latest_word,
 * latest_view, index_word), the writer's table) into ``a``: 1, or 0 without an error
 * set if the code has no symbol, -1 on an error. */
static int
json_target(const char *text, Py_ssize_t n, PyObject *targets, StoreArgs *a)
{
    PyObject *code = PyUnicode_FromStringAndSize(text, n);
    if (code == NULL) {
        return -1;
    }
    PyObject *target = PyDict_GetItemWithError(targets, code); /* borrowed */
    Py_DECREF(code);
    if (target == NULL) {
        return PyErr_Occurred() ? -1 : 0;
    }
    if (!PyTuple_CheckExact(target) || PyTuple_GET_SIZE(target) != 4) {
        PyErr_SetString(PyExc_TypeError, "targets values must be 4-tuples");
        return -1;
    }
    a->symbol = PyLong_AsUnsignedLong(PyTuple_GET_ITEM(target, 0));
    a->latest_word = PyLong_AsSsize_t(PyTuple_GET_ITEM(target, 1));
    a->index_word = PyLong_AsSsize_t(PyTuple_GET_ITEM(target, 3));
    return PyErr_Occurred() ? -1 : 1;
}

/* The arguments every JSON store takes: (segment, slot, feed_seq, recv_ns, targets,
 * payload). The payload's buffer is acquired; the caller releases it. */
static int
parse_json_store_args(PyObject *const *args, Py_ssize_t nargs, StoreArgs *a, Py_buffer *payload)
{
    if (!store_args_start(args, nargs, 6, &a->seg)) {
        return 0;
    }
    a->slot = PyLong_AsSsize_t(args[1]);
    a->feed_seq = PyLong_AsUnsignedLongLong(args[2]);
    a->recv_ns = PyLong_AsLongLong(args[3]);
    if (PyErr_Occurred()) {
        return 0;
    }
    if (a->feed_seq == 0) {
        PyErr_SetString(PyExc_ValueError, "feed_seq must be >= 1");
        return 0;
    }
    if (!PyDict_CheckExact(args[4])) {
        PyErr_SetString(PyExc_TypeError, "targets must be a dict");
        return 0;
    }
    return PyObject_GetBuffer(args[5], payload, PyBUF_SIMPLE) == 0;
}

/* A JSON store's step after json_target (-1 error, 0 frame not taken, 1 code found):
 * -1 to raise, 0 to return False, 1 to store a record of record_size at its target. */
static int
json_store_go(int target, const StoreArgs *a, Py_ssize_t record_size)
{
    if (target <= 0) {
        return target;
    }
    return target_in_segment(a, record_size) ? 1 : -1;
}

/* The stream type's code: of its name, or of None (null or absent). */
static int
stream_type_code(const char *text, Py_ssize_t n, long *code)
{
    const EnumTable *table = &enum_tables[5];
    int known = n >= 0 ? enum_code(table, text, n, code) : table->has_none;
    if (n < 0 && known) {
        *code = table->none_code;
    }
    return known && *code >= 0 && *code <= UINT8_MAX;
}

static PyObject *
store_orderbook_json(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    StoreArgs a;
    Py_buffer payload;
    if (!parse_json_store_args(args, nargs, &a, &payload)) {
        return NULL;
    }
    JsonBook book;
    Json j = {(const char *)payload.buf, (const char *)payload.buf + payload.len};
    long stream_type = 0;
    /* book.code and book.stream_type point into the payload: used before release. */
    int target = 0;
    if (json_orderbook(&j, &book) &&
        stream_type_code(book.stream_type, book.stream_type_len, &stream_type)) {
        target = json_target(book.code, book.code_len, args[4], &a);
    }
    PyBuffer_Release(&payload);
    int go = json_store_go(target, &a, ORDERBOOK_RECORD_SIZE);
    if (go <= 0) {
        return go < 0 ? NULL : Py_NewRef(Py_False);
    }
    uint8_t rec[ORDERBOOK_RECORD_SIZE];
    memset(rec, 0, sizeof rec);
    put_orderbook_head(rec, &a, book.sim_ns, book.timestamp, book.n_levels, stream_type,
                       book.totals);
    memcpy(rec + ORDERBOOK_LEVELS_OFF, book.levels, sizeof(double) * UNIT_FIELDS * book.n_levels);
    publish(&a.seg, a.slot, a.latest_word, a.index_word, a.feed_seq, rec, sizeof rec);
    Py_RETURN_TRUE;
}

/* ----------------------------------------------------------- ticker from its JSON */

/*
 * store_ticker_json: the same for a DEFAULT-format ticker frame, with the keys of
 * feedhandler.upbit.hot.HotTicker. Every key but "type" and "code" is optional (absent
 * reads as null); floats are numbers or null, the two timestamps integers or null,
 * sim_ns an integer, is_trading_suspended true, false or null, the enum keys and the
 * strings the record does not hold (dates, times, trade_status, market_state_for_ios)
 * plain strings or null. An enum string without a code is left to the Python path.
 */

enum {
    TJ_TYPE = TK_FIELDS, TJ_CODE, TJ_OTHER_STRINGS, TJ_KEYS = TJ_OTHER_STRINGS + 7
};
static const char *ticker_json_keys[TJ_KEYS];
static size_t ticker_json_key_lengths[TJ_KEYS];
static const char *ticker_other_strings[7] = {
    "trade_date", "trade_time", "highest_52_week_date", "lowest_52_week_date",
    "delisting_date", "trade_status", "market_state_for_ios",
};
/* The key that followed each key in the last frame: frames repeat one key order, so
 * the next key is found at the first comparison. */
static int ticker_key_successor[TJ_KEYS + 1];

/* Per ticker field: its index in ticker_enum_fields, or -1 (set when loaded). */
static int ticker_enum_of_field[TK_FIELDS];

static void
init_ticker_json_keys(void)
{
    for (int k = 0; k < TK_FIELDS; k++) {
        ticker_json_keys[k] = ticker_names[k];
    }
    ticker_json_keys[TJ_TYPE] = "type";
    ticker_json_keys[TJ_CODE] = "code";
    for (int k = 0; k < 7; k++) {
        ticker_json_keys[TJ_OTHER_STRINGS + k] = ticker_other_strings[k];
    }
    for (int k = 0; k < TJ_KEYS; k++) {
        ticker_json_key_lengths[k] = strlen(ticker_json_keys[k]);
    }
    for (int k = 0; k < TK_FIELDS; k++) {
        ticker_enum_of_field[k] = -1;
    }
    for (int e = 0; e < 6; e++) {
        ticker_enum_of_field[ticker_enum_fields[e]] = e;
    }
}

typedef struct {
    const char *code;
    Py_ssize_t code_len;
    int64_t sim_ns, timestamp, trade_timestamp;
    long codes[6];
    double floats[TICKER_FLOATS];
} JsonTicker;


static int
json_ticker(Json *j, JsonTicker *t)
{
    t->sim_ns = t->timestamp = t->trade_timestamp = 0;
    for (int i = 0; i < TICKER_FLOATS; i++) {
        t->floats[i] = Py_NAN;
    }
    for (int e = 0; e < 6; e++) {
        const EnumTable *table = &enum_tables[e];
        if (!table->has_none) {
            return 0;
        }
        t->codes[e] = table->none_code;
    }
    if (!take(j, '{')) {
        return 0;
    }
    uint64_t seen = 0;
    int previous = TJ_KEYS;
    do {
        const char *key, *text;
        Py_ssize_t n;
        if (!key_string(j, &key, &n) || !take(j, ':')) {
            return 0;
        }
        int field = key_index(key, n, ticker_json_keys, ticker_json_key_lengths, TJ_KEYS,
                              ticker_key_successor[previous]);
        if (field < 0 || (seen & (UINT64_C(1) << field))) {
            return 0;
        }
        ticker_key_successor[previous] = field;
        previous = field;
        seen |= UINT64_C(1) << field;
        int ok;
        if (field >= TK_FLOATS && field < TK_FIELDS) {
            ok = take_literal(j, "null", 4) || json_double(j, &t->floats[field - TK_FLOATS]);
        }
        else if (field == TK_SIM_NS) {
            ok = json_int64(j, &t->sim_ns);
        }
        else if (field == TK_TIMESTAMP || field == TK_TRADE_TIMESTAMP) {
            int64_t *out = field == TK_TIMESTAMP ? &t->timestamp : &t->trade_timestamp;
            ok = take_literal(j, "null", 4) || json_int64(j, out);
        }
        else if (field == TK_SUSPENDED) {
            const EnumTable *table = &enum_tables[4];
            if (take_literal(j, "true", 4)) {
                ok = table->has_true;
                t->codes[4] = table->true_code;
            }
            else if (take_literal(j, "false", 5)) {
                ok = table->has_false;
                t->codes[4] = table->false_code;
            }
            else {
                ok = take_literal(j, "null", 4); /* the None code, set above */
            }
        }
        else if (field < TK_FIELDS) { /* an enum string */
            int e = ticker_enum_of_field[field];
            ok = e >= 0 && (take_literal(j, "null", 4) ||
                            (plain_string(j, &text, &n) &&
                             enum_code(&enum_tables[e], text, n, &t->codes[e])));
        }
        else if (field == TJ_TYPE) {
            ok = plain_string(j, &text, &n) && n == 6 && memcmp(text, "ticker", 6) == 0;
        }
        else if (field == TJ_CODE) {
            ok = plain_string(j, &t->code, &t->code_len);
        }
        else {
            ok = take_literal(j, "null", 4) || plain_string(j, &text, &n);
        }
        if (!ok) {
            return 0;
        }
    } while (take(j, ','));
    if (!take(j, '}')) {
        return 0;
    }
    skip_space(j);
    uint64_t required = (UINT64_C(1) << TJ_TYPE) | (UINT64_C(1) << TJ_CODE);
    return j->p == j->end && (seen & required) == required;
}

static PyObject *
store_ticker_json(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    StoreArgs a;
    Py_buffer payload;
    if (!parse_json_store_args(args, nargs, &a, &payload)) {
        return NULL;
    }
    JsonTicker ticker;
    Json j = {(const char *)payload.buf, (const char *)payload.buf + payload.len};
    /* ticker.code points into the payload: used before release. */
    int target = json_ticker(&j, &ticker) ? json_target(ticker.code, ticker.code_len, args[4], &a)
                                          : 0;
    PyBuffer_Release(&payload);
    int go = json_store_go(target, &a, TICKER_RECORD_SIZE);
    if (go <= 0) {
        return go < 0 ? NULL : Py_NewRef(Py_False);
    }
    uint8_t rec[TICKER_RECORD_SIZE];
    memset(rec, 0, sizeof rec);
    if (!put_ticker_record(rec, &a, ticker.sim_ns, ticker.timestamp, ticker.trade_timestamp,
                           ticker.codes, ticker.floats)) {
        Py_RETURN_FALSE;
    }
    publish(&a.seg, a.slot, a.latest_word, a.index_word, a.feed_seq, rec, sizeof rec);
    Py_RETURN_TRUE;
}

/* -------------------------------------------------------------------------- module */

/* (segment, feed_seq): the head store of the Python writer's protocol, with its wake. */
static PyObject *
publish_head(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Segment seg;
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "publish_head takes 2 arguments, got %zd", nargs);
        return NULL;
    }
    if (!segment_of(args[0], &seg) || !in_segment(&seg, 0, NOTIFY_HEADER_SIZE)) {
        return NULL;
    }
    unsigned long long feed_seq = PyLong_AsUnsignedLongLong(args[1]);
    if (feed_seq == (unsigned long long)-1 && PyErr_Occurred()) {
        return NULL;
    }
    publish_head_and_wake(seg.base, feed_seq);
    Py_RETURN_NONE;
}

/* (segment): wake every reader sleeping on the head, e.g. after a state change. */
static PyObject *
wake_readers(PyObject *module, PyObject *segment)
{
    Segment seg;
    if (!segment_of(segment, &seg) || !in_segment(&seg, 0, NOTIFY_HEADER_SIZE)) {
        return NULL;
    }
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    wake_head_waiters(seg.base);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"store_ticker", (PyCFunction)(void (*)(void))store_ticker, METH_FASTCALL,
     "store_ticker(segment, slot, latest_word, index_word, feed_seq, recv_ns, symbol, msg)"
     " -> bool\n\nStore and publish one ticker record; False (nothing written) if the "
     "message is outside the common case."},
    {"store_orderbook", (PyCFunction)(void (*)(void))store_orderbook, METH_FASTCALL,
     "store_orderbook(segment, slot, latest_word, index_word, feed_seq, recv_ns, symbol, msg)"
     " -> bool\n\nStore and publish one order-book record; False (nothing written) if the "
     "message is outside the common case."},
    {"store_orderbook_json", (PyCFunction)(void (*)(void))store_orderbook_json, METH_FASTCALL,
     "store_orderbook_json(segment, slot, feed_seq, recv_ns, targets, payload) -> bool\n\n"
     "Parse a DEFAULT-format order-book frame and store and publish its record; False "
     "(nothing written) if the frame is outside the common case or its code has no "
     "symbol in targets."},
    {"store_ticker_json", (PyCFunction)(void (*)(void))store_ticker_json, METH_FASTCALL,
     "store_ticker_json(segment, slot, feed_seq, recv_ns, targets, payload) -> bool\n\n"
     "Parse a DEFAULT-format ticker frame and store and publish its record; False "
     "(nothing written) if the frame is outside the common case or its code has no "
     "symbol in targets."},
    {"publish_head", (PyCFunction)(void (*)(void))publish_head, METH_FASTCALL,
     "publish_head(segment, feed_seq): store the head word and wake the readers sleeping "
     "on it."},
    {"wake_readers", wake_readers, METH_O,
     "wake_readers(segment): wake every reader sleeping on the segment's head."},
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
    for (int k = 0; k < UNIT_FIELDS; k++) {
        unit_name_lengths[k] = strlen(unit_names[k]);
    }
    for (int k = 0; k < OJ_KEYS; k++) {
        orderbook_json_key_lengths[k] = strlen(orderbook_json_keys[k]);
    }
    init_ticker_json_keys();
    PyObject *module = PyModule_Create(&module_def);
    if (module == NULL) {
        return NULL;
    }
    if (PyModule_AddIntConstant(module, "TICKER_RECORD_SIZE", TICKER_RECORD_SIZE) < 0 ||
        PyModule_AddIntConstant(module, "ORDERBOOK_RECORD_SIZE", ORDERBOOK_RECORD_SIZE) < 0 ||
        PyModule_AddIntConstant(module, "MAX_LEVELS", MAX_LEVELS) < 0 ||
        PyModule_AddIntConstant(module, "HEAD_WORD", HEAD_WORD) < 0 ||
        PyModule_AddIntConstant(module, "WAITERS_WORD", WAITERS_WORD) < 0 ||
        PyModule_AddIntConstant(module, "WAKES_WORD", WAKES_WORD) < 0 ||
        PyModule_AddIntConstant(module, "WAKE_MISSES_WORD", WAKE_MISSES_WORD) < 0 ||
        PyModule_AddIntConstant(module, "WAKE_MISSES_TO_DOUBT", WAKE_MISSES_TO_DOUBT) < 0) {
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
