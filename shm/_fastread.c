/*
 * Seqlocked ring copies for shm.reader, in C.
 *
 * copy_ring(buffer, ring_off, record_size, capacity, first, last) copies the ring records
 * of feed_seq first..last into a new bytearray, with the reader protocol of
 * shm/reader.py: a record is kept only if its seq word is 2 * feed_seq before the copy
 * and still is after it (acquire-ordered), so a record being rewritten or already
 * replaced by a newer one is left out. The caller counts what was left out from the
 * length. The same loop in Python costs about a microsecond per record of interpreter
 * work, which a strategy polling for the next record pays on every update.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

static PyObject *
copy_ring(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 6) {
        PyErr_Format(PyExc_TypeError, "copy_ring takes 6 arguments, got %zd", nargs);
        return NULL;
    }
    long long values[5];
    for (int i = 0; i < 5; i++) {
        values[i] = PyLong_AsLongLong(args[i + 1]);
        if (values[i] == -1 && PyErr_Occurred()) {
            return NULL;
        }
    }
    long long ring_off = values[0], size = values[1], capacity = values[2];
    long long first = values[3], last = values[4];
    if (ring_off < 0 || ring_off % 8 || size < 8 || size % 8 || capacity < 1 || first < 1
        || last < first || last - first >= capacity) {
        PyErr_Format(
            PyExc_ValueError,
            "copy_ring: bad geometry or range (ring_off=%lld size=%lld capacity=%lld "
            "first=%lld last=%lld)",
            ring_off, size, capacity, first, last);
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    if (capacity > (view.len - ring_off) / size) {
        PyBuffer_Release(&view);
        PyErr_Format(
            PyExc_ValueError, "copy_ring: a ring of %lld records of %lld bytes at %lld "
            "does not fit a buffer of %zd bytes", capacity, size, ring_off, view.len);
        return NULL;
    }
    Py_ssize_t count = (Py_ssize_t)(last - first + 1);
    PyObject *out = PyByteArray_FromStringAndSize(NULL, count * size);
    if (out == NULL) {
        PyBuffer_Release(&view);
        return NULL;
    }
    const char *ring = (const char *)view.buf + ring_off;
    char *dst = PyByteArray_AS_STRING(out);
    Py_ssize_t kept = 0;
    for (long long position = first; position <= last; position++) {
        const char *record = ring + ((position - 1) % capacity) * size;
        const uint64_t *seq = (const uint64_t *)record;
        uint64_t want = 2 * (uint64_t)position;
        if (__atomic_load_n(seq, __ATOMIC_ACQUIRE) != want) {
            continue; /* overwritten by a newer record, or being overwritten now */
        }
        memcpy(dst + kept * size, record, (size_t)size);
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        if (__atomic_load_n(seq, __ATOMIC_RELAXED) == want) {
            kept++;
        }
    }
    PyBuffer_Release(&view);
    if (kept < count && PyByteArray_Resize(out, kept * size) < 0) {
        Py_DECREF(out);
        return NULL;
    }
    return out;
}

static PyMethodDef methods[] = {
    {"copy_ring", (PyCFunction)(void (*)(void))copy_ring, METH_FASTCALL,
     "copy_ring(buffer, ring_off, record_size, capacity, first, last) -> bytearray of "
     "the records of feed_seq first..last that were complete and unchanged while copied"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_fastread", "Seqlocked ring copies for shm.reader.", -1, methods,
};

PyMODINIT_FUNC
PyInit__fastread(void)
{
    return PyModule_Create(&module_def);
}
