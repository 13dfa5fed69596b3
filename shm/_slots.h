/*
 * Reading a message's fields straight from their slots (shared by the C modules).
 *
 * msgspec structs (and classes with __slots__) keep each field in an object slot at a
 * fixed offset, described by a member descriptor on the class. The offsets of a class's
 * fields are looked up once and cached; reading a field is then one load. A class whose
 * fields are not all plain object slots is remembered as unusable, and callers fall back
 * to their Python path for it.
 */
#ifndef UPFEED_SLOTS_H
#define UPFEED_SLOTS_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#define MAX_SLOT_FIELDS 32
#define CACHED_CLASSES 8

typedef struct {
    PyTypeObject *type; /* strong reference; NULL: free entry */
    int usable;         /* 0: some field is not a plain object slot */
    Py_ssize_t offset[MAX_SLOT_FIELDS];
} ClassSlots;

typedef struct {
    const char **names;
    int n;
    ClassSlots entries[CACHED_CLASSES];
} SlotCache;

/* The slot offsets of ``type``'s fields, or NULL if they are not all plain slots (or the
 * cache is full). Never raises. */
static const ClassSlots *
class_slots(SlotCache *cache, PyTypeObject *type)
{
    ClassSlots *free_entry = NULL;
    for (int i = 0; i < CACHED_CLASSES; i++) {
        ClassSlots *entry = &cache->entries[i];
        if (entry->type == type) {
            return entry->usable ? entry : NULL;
        }
        if (entry->type == NULL && free_entry == NULL) {
            free_entry = entry;
        }
    }
    if (free_entry == NULL) {
        return NULL;
    }
    int usable = 1;
    for (int f = 0; f < cache->n && usable; f++) {
        PyObject *descr = PyObject_GetAttrString((PyObject *)type, cache->names[f]);
        if (descr == NULL) {
            PyErr_Clear();
            usable = 0;
            break;
        }
        if (Py_IS_TYPE(descr, &PyMemberDescr_Type)) {
            PyMemberDef *member = ((PyMemberDescrObject *)descr)->d_member;
            if (member->type == T_OBJECT_EX || member->type == T_OBJECT) {
                free_entry->offset[f] = member->offset;
            }
            else {
                usable = 0;
            }
        }
        else {
            usable = 0;
        }
        Py_DECREF(descr);
    }
    Py_INCREF(type);
    free_entry->type = type;
    free_entry->usable = usable;
    return usable ? free_entry : NULL;
}

/* Borrowed references to ``obj``'s fields, in ``cache``'s order, into ``values``; 0 if
 * its class is not usable or a field is unset. Never raises. */
static inline int
read_fields(SlotCache *cache, PyObject *obj, PyObject **values)
{
    const ClassSlots *cls = class_slots(cache, Py_TYPE(obj));
    if (cls == NULL) {
        return 0;
    }
    for (int f = 0; f < cache->n; f++) {
        values[f] = *(PyObject **)((char *)obj + cls->offset[f]);
        if (values[f] == NULL) {
            return 0;
        }
    }
    return 1;
}

#endif /* UPFEED_SLOTS_H */
