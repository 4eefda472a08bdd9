#include <sqlite3.h>

// SQLITE_TRANSIENT is a cast macro Swift cannot import: these copy the bytes before returning.
static inline int dingstream_bind_text(sqlite3_stmt *statement, int index, const char *text, int length) {
    return sqlite3_bind_text(statement, index, text, length, SQLITE_TRANSIENT);
}

static inline int dingstream_bind_blob(sqlite3_stmt *statement, int index, const void *bytes, int length) {
    return sqlite3_bind_blob(statement, index, bytes, length, SQLITE_TRANSIENT);
}

// Binds without a copy: the bytes must stay valid until the statement is stepped and reset.
static inline int dingstream_bind_blob_static(sqlite3_stmt *statement, int index, const void *bytes, int length) {
    return sqlite3_bind_blob(statement, index, bytes, length, SQLITE_STATIC);
}

// Turns off SQLite's memory statistics, which take a global mutex on every allocation; must run
// before the library initialises (sqlite3_config is variadic, which Swift cannot call).
static inline int dingstream_disable_memory_statistics(void) {
    return sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0);
}
