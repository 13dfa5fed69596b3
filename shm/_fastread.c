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
 *
 * wait_heads(headers, cursors, timeout, spin) sleeps until one of the segments' heads
 * differs from its cursor or the segment stops being live (see _notify.h), without
 * holding the GIL: a strategy waits for the next record without keeping a core busy.
 *
 * doorbell(...) runs a worker's shm doorbell (workers/worker.py) for a slice: answer,
 * sleep on the heads, ring, over and over, without taking the GIL between rings, so the
 * thread costs the worker's main thread no GIL hand-off per ring.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <poll.h>
#include <unistd.h>
#include <stdint.h>
#include <string.h>
#include "_notify.h"

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

/* ----------------------------------------------------------------------- waiting */

#define STATE_LIVE 1
#define MAX_WAIT_SEGMENTS 16
#define WAIT_UNSUPPORTED (-2)
#define WAIT_TIMED_OUT (-1)
/* struct futex_waitv and FUTEX2_SIZE_U32 of linux/futex.h, which older headers lack. */
typedef struct {
    uint64_t val;
    uint64_t uaddr;
    uint32_t flags;
    uint32_t reserved;
} WaitEntry;
#define WAIT_SIZE_U32 0x02
#ifndef __NR_futex_waitv
#define __NR_futex_waitv 449
#endif

static inline void
cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* The first segment whose head is not its cursor or whose state left live; -1 if none. */
static int
first_changed(uint8_t *const *bases, const uint64_t *cursors, int n)
{
    for (int i = 0; i < n; i++) {
        const uint64_t *words = (const uint64_t *)bases[i];
        if (__atomic_load_n(words + HEAD_WORD, __ATOMIC_SEQ_CST) != cursors[i] ||
            __atomic_load_n(words + STATE_WORD, __ATOMIC_ACQUIRE) != STATE_LIVE) {
            return i;
        }
    }
    return -1;
}

/* One sleep on the heads until deadline_ns; 0 or the errno of the futex call. */
static int
sleep_on_heads(uint8_t *const *bases, const uint64_t *cursors, int n, int64_t deadline_ns)
{
    long rc;
    if (n == 1) {
        int64_t left = deadline_ns - monotonic_ns();
        if (left <= 0) {
            return ETIMEDOUT;
        }
        struct timespec relative = {left / 1000000000, left % 1000000000};
        rc = syscall(SYS_futex, head_futex(bases[0]), FUTEX_WAIT, (uint32_t)cursors[0],
                     &relative, NULL, 0);
    }
    else {
        WaitEntry entries[MAX_WAIT_SEGMENTS];
        for (int i = 0; i < n; i++) {
            entries[i].val = (uint32_t)cursors[i];
            entries[i].uaddr = (uint64_t)(uintptr_t)head_futex(bases[i]);
            entries[i].flags = WAIT_SIZE_U32; /* not private: the word is shared memory */
            entries[i].reserved = 0;
        }
        struct timespec absolute = {deadline_ns / 1000000000, deadline_ns % 1000000000};
        rc = syscall(__NR_futex_waitv, entries, (unsigned)n, 0u, &absolute, CLOCK_MONOTONIC);
    }
    return rc < 0 ? errno : 0;
}

/* Runs with the GIL released: the index of the first segment that changed,
 * WAIT_TIMED_OUT, or WAIT_UNSUPPORTED (no futex_waitv in this kernel). A signal (EINTR)
 * or a failing futex call returns early with its errno in *error. */
static int
wait_loop(uint8_t *const *bases, const uint64_t *cursors, int n, int64_t deadline_ns,
          int64_t spin_end_ns, int *error)
{
    int changed;
    while ((changed = first_changed(bases, cursors, n)) < 0 && monotonic_ns() < spin_end_ns) {
        cpu_relax();
    }
    while (changed < 0) {
        for (int i = 0; i < n; i++) {
            count_sleeper(bases[i]);
        }
        changed = first_changed(bases, cursors, n);
        int err = changed < 0 ? sleep_on_heads(bases, cursors, n, deadline_ns) : 0;
        for (int i = 0; i < n; i++) {
            __atomic_fetch_sub((uint64_t *)bases[i] + WAITERS_WORD, 1, __ATOMIC_SEQ_CST);
        }
        if (changed >= 0) {
            break;
        }
        if (err == ENOSYS) {
            return WAIT_UNSUPPORTED;
        }
        if (err == EINTR) {
            *error = EINTR;
            return WAIT_TIMED_OUT;
        }
        if (err != 0 && err != EAGAIN && err != ETIMEDOUT) {
            *error = err;
            return WAIT_TIMED_OUT;
        }
        changed = first_changed(bases, cursors, n);
        if (changed < 0 && monotonic_ns() >= deadline_ns) {
            return WAIT_TIMED_OUT;
        }
    }
    return changed;
}

/* The headers' buffers (held: release with release_headers) and the cursors as C values;
 * the number of segments, or -1 with an exception set. */
static Py_ssize_t
hold_headers(const char *fname, PyObject *header_arg, PyObject *cursor_arg, Py_buffer *views,
             uint8_t **bases, uint64_t *cursors, int *held)
{
    *held = 0;
    PyObject *headers = PySequence_Fast(header_arg, "headers must be a sequence");
    if (headers == NULL) {
        return -1;
    }
    PyObject *cursor_seq = PySequence_Fast(cursor_arg, "cursors must be a sequence");
    if (cursor_seq == NULL) {
        Py_DECREF(headers);
        return -1;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(headers);
    if (n < 1 || n > MAX_WAIT_SEGMENTS || PySequence_Fast_GET_SIZE(cursor_seq) != n) {
        PyErr_Format(PyExc_ValueError,
                     "%s: 1 to %d headers and as many cursors, got %zd and %zd", fname,
                     MAX_WAIT_SEGMENTS, n, PySequence_Fast_GET_SIZE(cursor_seq));
        n = -1;
        goto done;
    }
    for (; *held < n; (*held)++) {
        int i = *held;
        cursors[i] = PyLong_AsUnsignedLongLong(PySequence_Fast_GET_ITEM(cursor_seq, i));
        if (PyErr_Occurred()) {
            n = -1;
            goto done;
        }
        PyObject *header = PySequence_Fast_GET_ITEM(headers, i);
        if (PyObject_GetBuffer(header, &views[i], PyBUF_WRITABLE) < 0) {
            n = -1;
            goto done;
        }
        if (views[i].len < NOTIFY_HEADER_SIZE || (uintptr_t)views[i].buf % 8) {
            PyBuffer_Release(&views[i]);
            PyErr_Format(PyExc_ValueError, "%s: a header must be %d aligned bytes, got %zd",
                         fname, NOTIFY_HEADER_SIZE, views[i].len);
            n = -1;
            goto done;
        }
        bases[i] = views[i].buf;
    }
done:
    Py_DECREF(cursor_seq);
    Py_DECREF(headers);
    return n;
}

static void
release_headers(Py_buffer *views, int held)
{
    for (int i = 0; i < held; i++) {
        PyBuffer_Release(&views[i]);
    }
}

static PyObject *
wait_heads(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_Format(PyExc_TypeError, "wait_heads takes 4 arguments, got %zd", nargs);
        return NULL;
    }
    double timeout = PyFloat_AsDouble(args[2]);
    double spin = PyFloat_AsDouble(args[3]);
    if (PyErr_Occurred()) {
        return NULL;
    }
    if (!(timeout >= 0.0) || !(spin >= 0.0)) {
        PyErr_SetString(PyExc_ValueError, "wait_heads: timeout and spin must be >= 0");
        return NULL;
    }
    Py_buffer views[MAX_WAIT_SEGMENTS];
    uint8_t *bases[MAX_WAIT_SEGMENTS];
    uint64_t cursors[MAX_WAIT_SEGMENTS];
    int held;
    Py_ssize_t n = hold_headers("wait_heads", args[0], args[1], views, bases, cursors, &held);
    PyObject *result = NULL;
    if (n < 0) {
        goto done;
    }
    int64_t start = monotonic_ns();
    int64_t deadline = start + (int64_t)(fmin(timeout, 1e9) * 1e9);
    int64_t spin_end = start + (int64_t)(fmin(spin, timeout) * 1e9);
    int changed, error;
    for (;;) {
        error = 0;
        Py_BEGIN_ALLOW_THREADS
        changed = wait_loop(bases, cursors, (int)n, deadline, spin_end, &error);
        Py_END_ALLOW_THREADS
        if (error != EINTR) {
            break;
        }
        /* A signal: run its Python handler now, which may raise (KeyboardInterrupt). */
        if (PyErr_CheckSignals() < 0) {
            goto done;
        }
    }
    if (error != 0) {
        errno = error;
        PyErr_SetFromErrno(PyExc_OSError);
        goto done;
    }
    result = PyLong_FromLong(changed);
done:
    release_headers(views, held);
    return result;
}

/* ---------------------------------------------------------------------- doorbell */

/* Waits (GIL released) until answer_fd is readable and takes what it holds; 1 when
 * answered, 0 at the deadline, -1 with *error set. */
static int
wait_answer(int answer_fd, int64_t deadline_ns, int *error)
{
    int64_t left = deadline_ns - monotonic_ns();
    if (left <= 0) {
        return 0;
    }
    struct pollfd readable = {answer_fd, POLLIN, 0};
    int rc = poll(&readable, 1, (int)((left + 999999) / 1000000));
    if (rc < 0) {
        *error = errno;
        return -1;
    }
    if (rc == 0) {
        return 0;
    }
    uint64_t count;
    if (read(answer_fd, &count, sizeof count) < 0 && errno != EAGAIN) {
        *error = errno;
        return -1;
    }
    return 1;
}

/* The doorbell's cycles until the deadline: wait for the answer to the last ring, sleep
 * on the heads, take the new heads as cursors and ring (write 1 to ring_fd). Returns
 * early, 0, when a segment's state leaves live (the caller follows it) and -1 with
 * *error set when a call fails (EINTR included); WAIT_UNSUPPORTED as wait_loop. */
static int
doorbell_loop(uint8_t *const *bases, uint64_t *cursors, int n, int *answered, int answer_fd,
              int ring_fd, int64_t deadline_ns, int *error)
{
    for (;;) {
        if (!*answered) {
            int rc = wait_answer(answer_fd, deadline_ns, error);
            if (rc <= 0) {
                return rc;
            }
            *answered = 1;
        }
        int changed = wait_loop(bases, cursors, n, deadline_ns, 0, error);
        if (changed == WAIT_UNSUPPORTED) {
            return WAIT_UNSUPPORTED;
        }
        if (changed == WAIT_TIMED_OUT) {
            return *error ? -1 : 0;
        }
        int moved = 0, left_live = 0;
        for (int i = 0; i < n; i++) {
            const uint64_t *words = (const uint64_t *)bases[i];
            uint64_t head = __atomic_load_n(words + HEAD_WORD, __ATOMIC_ACQUIRE);
            moved |= head != cursors[i];
            cursors[i] = head;
            left_live |= __atomic_load_n(words + STATE_WORD, __ATOMIC_ACQUIRE) != STATE_LIVE;
        }
        if (moved) {
            uint64_t one = 1;
            if (write(ring_fd, &one, sizeof one) < 0 && errno != EAGAIN) {
                *error = errno;
                return -1;
            }
            *answered = 0;
        }
        if (left_live) {
            return 0;
        }
    }
}

static PyObject *
doorbell(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 6) {
        PyErr_Format(PyExc_TypeError, "doorbell takes 6 arguments, got %zd", nargs);
        return NULL;
    }
    int answered = PyObject_IsTrue(args[2]);
    long answer_fd = PyLong_AsLong(args[3]);
    long ring_fd = PyErr_Occurred() ? -1 : PyLong_AsLong(args[4]);
    double timeout = PyErr_Occurred() ? -1.0 : PyFloat_AsDouble(args[5]);
    if (answered < 0 || PyErr_Occurred()) {
        return NULL;
    }
    if (answer_fd < 0 || answer_fd > INT_MAX || ring_fd < 0 || ring_fd > INT_MAX ||
        !(timeout >= 0.0)) {
        PyErr_SetString(PyExc_ValueError, "doorbell: fds and timeout must be >= 0");
        return NULL;
    }
    Py_buffer views[MAX_WAIT_SEGMENTS];
    uint8_t *bases[MAX_WAIT_SEGMENTS];
    uint64_t cursors[MAX_WAIT_SEGMENTS];
    int held;
    Py_ssize_t n = hold_headers("doorbell", args[0], args[1], views, bases, cursors, &held);
    PyObject *result = NULL;
    if (n < 0) {
        goto done;
    }
    int64_t deadline = monotonic_ns() + (int64_t)(fmin(timeout, 1e9) * 1e9);
    int rc, error = 0;
    Py_BEGIN_ALLOW_THREADS
    do {
        error = 0;
        rc = doorbell_loop(bases, cursors, (int)n, &answered, (int)answer_fd, (int)ring_fd,
                           deadline, &error);
    } while (rc == -1 && error == EINTR);
    Py_END_ALLOW_THREADS
    if (rc == -1) {
        errno = error;
        PyErr_SetFromErrno(PyExc_OSError);
        goto done;
    }
    if (rc == WAIT_UNSUPPORTED) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    PyObject *heads = PyList_New(n);
    if (heads == NULL) {
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *head = PyLong_FromUnsignedLongLong(cursors[i]);
        if (head == NULL) {
            Py_DECREF(heads);
            goto done;
        }
        PyList_SET_ITEM(heads, i, head);
    }
    result = Py_BuildValue("(NN)", PyBool_FromLong(answered), heads);
done:
    release_headers(views, held);
    return result;
}

static PyMethodDef methods[] = {
    {"copy_ring", (PyCFunction)(void (*)(void))copy_ring, METH_FASTCALL,
     "copy_ring(buffer, ring_off, record_size, capacity, first, last) -> bytearray of "
     "the records of feed_seq first..last that were complete and unchanged while copied"},
    {"wait_heads", (PyCFunction)(void (*)(void))wait_heads, METH_FASTCALL,
     "wait_heads(headers, cursors, timeout, spin) -> int: sleep (spinning first for spin "
     "seconds) until a segment's head differs from its cursor or its state is no longer "
     "live; the index of that segment, -1 on timeout, -2 if this kernel cannot wait on "
     "several segments at once. headers are writable mappings of the segments' headers."},
    {"doorbell", (PyCFunction)(void (*)(void))doorbell, METH_FASTCALL,
     "doorbell(headers, cursors, answered, answer_fd, ring_fd, timeout) -> (answered, "
     "heads) or None: until timeout, or until a segment's state leaves live, wait for "
     "answer_fd (unless answered), then for a head to move past its cursor, then write 1 "
     "to ring_fd and take the heads as cursors; the GIL stays released throughout. None "
     "if this kernel cannot wait on several segments at once."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_fastread", "Seqlocked ring copies for shm.reader.", -1, methods,
};

PyMODINIT_FUNC
PyInit__fastread(void)
{
    PyObject *module = PyModule_Create(&module_def);
    if (module == NULL) {
        return NULL;
    }
    if (PyModule_AddIntConstant(module, "HEAD_WORD", HEAD_WORD) < 0 ||
        PyModule_AddIntConstant(module, "STATE_WORD", STATE_WORD) < 0 ||
        PyModule_AddIntConstant(module, "WAITERS_WORD", WAITERS_WORD) < 0 ||
        PyModule_AddIntConstant(module, "MAX_WAIT_SEGMENTS", MAX_WAIT_SEGMENTS) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
