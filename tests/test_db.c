/* test_db.c - tests for server/db.c, the SQLite store.
 *
 * How it works: every database is a real file in one mkdtemp directory under
 * /tmp (removed at the end). Migrations come from the repository's
 * migrations/ (the tests run from the repo root) or from migration
 * directories written here. A second, plain sqlite3 connection inspects what
 * db.c wrote (user_version, journal mode, row counts) and, in one case, holds
 * the write lock to exercise busy handling. Threads check that claims and
 * mixed traffic on the one shared connection stay correct. */
#include "db.h"
#include "test.h"
#include "util.h"

#include <ftw.h>
#include <pthread.h>
#include <sqlite3.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static char tmp_dir[] = "/tmp/distilld-test-db-XXXXXX";

/* A path inside the temp dir; a few rotating buffers so several can be live. */
static const char *tmp_path(const char *name) {
    static char bufs[8][512];
    static int next;
    char *b = bufs[next++ % 8];
    snprintf(b, sizeof bufs[0], "%s/%s", tmp_dir, name);
    return b;
}

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    if (!f || fputs(text, f) < 0 || fclose(f) != 0) {
        fprintf(stderr, "cannot write test file %s\n", path);
        exit(2);
    }
}

/* A migrations directory holding a copy of the repository's 0001_init.sql. */
static const char *migrations_with_init(const char *name) {
    const char *dir = tmp_path(name);
    if (mkdir(dir, 0700) != 0) {
        fprintf(stderr, "cannot create %s\n", dir);
        exit(2);
    }
    unsigned char *text;
    size_t size;
    char err[ERR_LEN];
    if (read_file_all("migrations/0001_init.sql", &text, &size, err) != 0) {
        fprintf(stderr, "%s (run the tests from the repository root)\n", err);
        exit(2);
    }
    char path[600];
    snprintf(path, sizeof path, "%s/0001_init.sql", dir);
    write_text(path, (const char *)text);
    free(text);
    return dir;
}

static void write_migration(const char *dir, const char *file, const char *sql) {
    char path[600];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    write_text(path, sql);
}

/* ---- a plain second connection, to look at the file db.c wrote ---- */

static sqlite3 *raw_open(const char *path) {
    sqlite3 *conn;
    if (sqlite3_open_v2(path, &conn, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL) != SQLITE_OK) {
        fprintf(stderr, "raw open %s failed\n", path);
        exit(2);
    }
    sqlite3_busy_timeout(conn, 5000);
    return conn;
}

/* The first column of the first row as an integer; -999 on an error. */
static long raw_long(const char *path, const char *sql, const char *bound_text) {
    sqlite3 *conn = raw_open(path);
    sqlite3_stmt *st;
    long value = -999;
    if (sqlite3_prepare_v2(conn, sql, -1, &st, NULL) == SQLITE_OK) {
        if (bound_text) sqlite3_bind_text(st, 1, bound_text, -1, SQLITE_TRANSIENT);
        if (sqlite3_step(st) == SQLITE_ROW) value = (long)sqlite3_column_int64(st, 0);
        sqlite3_finalize(st);
    }
    sqlite3_close(conn);
    return value;
}

static void raw_text(const char *path, const char *sql, char *out, size_t cap) {
    sqlite3 *conn = raw_open(path);
    sqlite3_stmt *st;
    snprintf(out, cap, "(error)");
    if (sqlite3_prepare_v2(conn, sql, -1, &st, NULL) == SQLITE_OK) {
        if (sqlite3_step(st) == SQLITE_ROW) snprintf(out, cap, "%s", (const char *)sqlite3_column_text(st, 0));
        sqlite3_finalize(st);
    }
    sqlite3_close(conn);
}

static void raw_exec(const char *path, const char *sql) {
    sqlite3 *conn = raw_open(path);
    if (sqlite3_exec(conn, sql, NULL, NULL, NULL) != SQLITE_OK) {
        fprintf(stderr, "raw exec %s failed: %s\n", sql, sqlite3_errmsg(conn));
        exit(2);
    }
    sqlite3_close(conn);
}

static long table_exists(const char *path, const char *table) {
    return raw_long(path, "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?", table);
}

/* ---- helpers on a Db ---- */

static Db *open_or_die(const char *path, const char *migrations) {
    Db *db;
    char err[ERR_LEN];
    if (db_open(&db, path, migrations, err) != 0) {
        fprintf(stderr, "db_open %s: %s\n", path, err);
        exit(2);
    }
    return db;
}

static void create_job(Db *db, char id[DB_ID_LEN]) {
    DbJob job;
    char err[ERR_LEN];
    if (db_job_create(db, "train", "{\"kind\":\"train\"}", 100, &job, err) != 0) {
        fprintf(stderr, "db_job_create: %s\n", err);
        exit(2);
    }
    memcpy(id, job.id, DB_ID_LEN);
    db_job_free(&job);
}

static void job_state_of(Db *db, const char *id, char state[DB_STATE_LEN]) {
    DbJob job;
    char err[ERR_LEN];
    if (db_job_get(db, id, &job, err) != 0) {
        snprintf(state, DB_STATE_LEN, "(missing)");
        return;
    }
    memcpy(state, job.state, DB_STATE_LEN);
    db_job_free(&job);
}

static int move(Db *db, const char *id, const char *from, const char *to) {
    const char *const list[] = {from, NULL};
    char err[ERR_LEN];
    return db_job_transition(db, id, list, to, NULL, err);
}

/* Brings a new job to `state` along legal edges. */
static void job_in_state(Db *db, const char *state, char id[DB_ID_LEN]) {
    create_job(db, id);
    if (!strcmp(state, "queued")) return;
    move(db, id, "queued", strcmp(state, "canceled") == 0 ? "canceled" : "running");
    if (!strcmp(state, "running") || !strcmp(state, "canceled")) return;
    move(db, id, "running", state);
}

/* Every event of a job, in order. */
static DbEvent *all_events(Db *db, const char *id, int *count) {
    DbEvent *events = NULL;
    char err[ERR_LEN];
    if (db_events_after(db, id, 0, -1, 1000, &events, count, err) != 0) *count = -1;
    return events;
}

/* ---- migrations ---- */

static void test_migrations(void) {
    char err[ERR_LEN];
    Db *db;

    TEST_CASE("migrations: a new database gets the repository's schema, user_version and WAL");
    const char *fresh = tmp_path("fresh.db");
    CHECK(db_open(&db, fresh, "migrations", err) == 0, "db_open: %s", err);
    char id[DB_ID_LEN];
    create_job(db, id);
    db_close(db);
    CHECK(raw_long(fresh, "PRAGMA user_version", NULL) == 1, "user_version %ld",
          raw_long(fresh, "PRAGMA user_version", NULL));
    char mode[32];
    raw_text(fresh, "PRAGMA journal_mode", mode, sizeof mode);
    CHECK(strcmp(mode, "wal") == 0, "journal_mode %s", mode);
    const char *tables[] = {"jobs", "metrics", "checkpoints", "events"};
    for (int i = 0; i < 4; i++) CHECK(table_exists(fresh, tables[i]) == 1, "no table %s", tables[i]);

    TEST_CASE("migrations: reopening applies nothing again and keeps the data");
    CHECK(db_open(&db, fresh, "migrations", err) == 0, "reopen: %s", err);
    if (db) {
        DbJob job;
        CHECK(db_job_get(db, id, &job, err) == 0, "job lost on reopen: %s", err);
        db_job_free(&job);
        db_close(db);
    }
    CHECK(raw_long(fresh, "PRAGMA user_version", NULL) == 1, "user_version changed");

    TEST_CASE("migrations: a new migration file is applied on reopen");
    const char *dir = migrations_with_init("m-upgrade");
    const char *upgraded = tmp_path("upgraded.db");
    db = open_or_die(upgraded, dir);
    create_job(db, id);
    db_close(db);
    write_migration(dir, "0002_notes.sql",
                    "-- a comment first\nCREATE TABLE notes (job_id TEXT, text TEXT);\n"
                    "ALTER TABLE jobs ADD COLUMN note TEXT NOT NULL DEFAULT '';\n");
    write_migration(dir, "README", "not a migration, ignored\n");
    CHECK(db_open(&db, upgraded, dir, err) == 0, "db_open after adding 0002: %s", err);
    CHECK(raw_long(upgraded, "PRAGMA user_version", NULL) == 2, "user_version %ld",
          raw_long(upgraded, "PRAGMA user_version", NULL));
    CHECK(table_exists(upgraded, "notes") == 1, "0002 not applied");
    if (db) {
        DbJob job;
        CHECK(db_job_get(db, id, &job, err) == 0, "job lost by the upgrade: %s", err);
        db_job_free(&job);
        create_job(db, id); /* the store still works on the wider table */
        db_close(db);
    }

    TEST_CASE("migrations: a failing migration rolls back every file and names itself");
    dir = migrations_with_init("m-bad");
    write_migration(dir, "0002_bad.sql", "CREATE TABLE fine (x);\n\nCREATE TABLE broken (;\n");
    const char *bad = tmp_path("bad.db");
    db = NULL;
    err[0] = 0;
    CHECK(db_open(&db, bad, dir, err) != 0 && db == NULL, "a broken migration was accepted");
    CHECK(strstr(err, "0002_bad.sql") && strstr(err, "line 3"), "message does not name the file and line: %s", err);
    CHECK(raw_long(bad, "PRAGMA user_version", NULL) == 0, "user_version moved");
    CHECK(table_exists(bad, "jobs") == 0 && table_exists(bad, "fine") == 0, "0001 or part of 0002 was kept");
    /* an existing database at version 1 stays at version 1 with its data */
    const char *at_one = tmp_path("at-one.db");
    const char *dir_one = migrations_with_init("m-one");
    db = open_or_die(at_one, dir_one);
    create_job(db, id);
    db_close(db);
    write_migration(dir_one, "0002_bad.sql", "DELETE FROM jobs;\nSELECT no_such_function();\n");
    CHECK(db_open(&db, at_one, dir_one, err) != 0, "a broken 0002 was accepted");
    CHECK(strstr(err, "0002_bad.sql") != NULL, "message does not name the file: %s", err);
    CHECK(raw_long(at_one, "PRAGMA user_version", NULL) == 1, "user_version moved");
    CHECK(raw_long(at_one, "SELECT COUNT(*) FROM jobs", NULL) == 1, "the DELETE of the failed migration stayed");

    TEST_CASE("migrations: a database from a newer distilld is refused");
    const char *newer = tmp_path("newer.db");
    db = open_or_die(newer, "migrations");
    db_close(db);
    raw_exec(newer, "PRAGMA user_version = 7");
    db = NULL;
    CHECK(db_open(&db, newer, "migrations", err) != 0 && db == NULL, "a newer schema was opened");
    CHECK(strstr(err, "newer") && strstr(err, newer), "message: %s", err);
    CHECK(raw_long(newer, "PRAGMA user_version", NULL) == 7, "user_version touched");

    TEST_CASE("migrations: bad file names, gaps, transactions, dangling references, no directory");
    dir = migrations_with_init("m-name");
    write_migration(dir, "2_second.sql", "CREATE TABLE x (y);");
    CHECK(db_open(&db, tmp_path("name.db"), dir, err) != 0 && strstr(err, "2_second.sql"), "bad name: %s", err);
    dir = migrations_with_init("m-gap");
    write_migration(dir, "0003_third.sql", "CREATE TABLE x (y);");
    CHECK(db_open(&db, tmp_path("gap.db"), dir, err) != 0 && strstr(err, "0003_third.sql"), "gap: %s", err);
    dir = migrations_with_init("m-dup");
    write_migration(dir, "0001_again.sql", "CREATE TABLE x (y);");
    CHECK(db_open(&db, tmp_path("dup.db"), dir, err) != 0 && strstr(err, "same number"), "duplicate: %s", err);
    dir = migrations_with_init("m-commit");
    write_migration(dir, "0002_commit.sql", "CREATE TABLE x (y);\nCOMMIT;\nCREATE TABLE z (y);\n");
    const char *commit_db = tmp_path("commit.db");
    CHECK(db_open(&db, commit_db, dir, err) != 0 && strstr(err, "0002_commit.sql") && strstr(err, "line 2"),
          "a COMMIT inside a migration: %s", err);
    CHECK(table_exists(commit_db, "x") == 0 && table_exists(commit_db, "jobs") == 0, "partly applied");
    dir = migrations_with_init("m-dangling");
    write_migration(dir, "0002_dangling.sql", "INSERT INTO metrics VALUES ('jnosuchjob', 'loss', 1, 0.5, 0);\n");
    CHECK(db_open(&db, tmp_path("dangling.db"), dir, err) != 0 && strstr(err, "metrics"), "dangling: %s", err);
    CHECK(db_open(&db, tmp_path("nodir.db"), tmp_path("no-such-dir"), err) != 0 && strstr(err, "no-such-dir"),
          "missing directory: %s", err);
    mkdir(tmp_path("m-empty"), 0700);
    CHECK(db_open(&db, tmp_path("empty.db"), tmp_path("m-empty"), err) != 0 && strstr(err, "no migrations"),
          "empty directory: %s", err);
}

/* ---- jobs ---- */

static void test_jobs(void) {
    char err[ERR_LEN];
    Db *db = open_or_die(tmp_path("jobs.db"), "migrations");

    TEST_CASE("jobs: create and get");
    DbJob job;
    double before = (double)time(NULL) - 1;
    CHECK(db_job_create(db, "distill", "{\"a\": 1}", 500, &job, err) == 0, "create: %s", err);
    CHECK(strlen(job.id) == 17 && job.id[0] == 'j' && strspn(job.id + 1, "0123456789abcdef") == 16, "id %s", job.id);
    CHECK(!strcmp(job.kind, "distill") && !strcmp(job.state, "queued"), "%s %s", job.kind, job.state);
    CHECK(job.spec_json && !strcmp(job.spec_json, "{\"a\": 1}"), "spec %s", job.spec_json);
    CHECK(job.step == 0 && job.total_steps == 500 && job.checkpoint_step == -1, "%ld %ld %ld", job.step,
          job.total_steps, job.checkpoint_step);
    CHECK(job.created_at >= before && job.created_at <= before + 10 && job.updated_at == job.created_at, "time %f",
          job.created_at);
    CHECK(!job.error[0] && !job.request[0] && !job.checkpoint_path[0], "non-empty defaults");
    DbJob again;
    CHECK(db_job_get(db, job.id, &again, err) == 0, "get: %s", err);
    CHECK(!strcmp(again.id, job.id) && !strcmp(again.spec_json, job.spec_json) && again.total_steps == 500,
          "get differs");
    db_job_free(&again);
    int count;
    DbEvent *events = all_events(db, job.id, &count);
    CHECK(count == 1 && !strcmp(events[0].type, "state") && strstr(events[0].data_json, "\"state\":\"queued\""),
          "submission event: %d %s", count, count > 0 ? events[0].data_json : "");
    db_events_free(events, count);
    DbJob other;
    CHECK(db_job_create(db, "train", "{}", 1, &other, err) == 0 && strcmp(other.id, job.id) != 0, "ids repeat");
    db_job_free(&other);
    db_job_free(&job);
    CHECK(db_job_get(db, "j0000000000000000", &job, err) == DB_NOT_FOUND, "unknown id found");
    CHECK(db_job_create(db, "sing", "{}", 1, &job, err) == DB_ERROR && strstr(err, "sing"), "bad kind: %s", err);
    CHECK(db_job_create(db, "train", NULL, 1, &job, err) == DB_ERROR, "no spec accepted");
    db_close(db);

    TEST_CASE("jobs: list newest first, pages without repeats or gaps, state filter, cursors");
    db = open_or_die(tmp_path("list.db"), "migrations");
    enum { N = 23 };
    char ids[N][DB_ID_LEN];
    for (int i = 0; i < N; i++) create_job(db, ids[i]);
    for (int page_size = 1; page_size <= 24; page_size += (page_size < 6 ? 1 : 17)) {
        char cursor[DB_ID_LEN] = "", next[DB_ID_LEN];
        int seen = 0, pages = 0, in_order = 1;
        for (;;) {
            DbJob *jobs;
            int n;
            if (db_jobs_list(db, NULL, cursor, page_size, &jobs, &n, next, err) != 0) {
                CHECK(0, "list: %s", err);
                break;
            }
            pages++;
            for (int i = 0; i < n; i++) {
                if (seen + i >= N || strcmp(jobs[i].id, ids[N - 1 - seen - i]) != 0) in_order = 0;
                db_job_free(&jobs[i]);
            }
            free(jobs);
            seen += n;
            CHECK(n == page_size || !next[0], "a short page of %d with limit %d, and more to come", n, page_size);
            if (!next[0] || pages > N + 1) break;
            memcpy(cursor, next, DB_ID_LEN);
        }
        CHECK(seen == N && in_order, "limit %d: %d jobs seen, in order %d", page_size, seen, in_order);
        CHECK(pages == (N + page_size - 1) / page_size, "limit %d: %d pages", page_size, pages);
    }
    /* a job created between pages does not shift the next page */
    DbJob *jobs;
    int n;
    char next[DB_ID_LEN];
    CHECK(db_jobs_list(db, NULL, "", 5, &jobs, &n, next, err) == 0 && n == 5, "first page");
    for (int i = 0; i < n; i++) db_job_free(&jobs[i]);
    free(jobs);
    char late[DB_ID_LEN];
    create_job(db, late);
    CHECK(db_jobs_list(db, NULL, next, 5, &jobs, &n, next, err) == 0 && n == 5 && !strcmp(jobs[0].id, ids[N - 6]),
          "second page moved after a new job");
    for (int i = 0; i < n; i++) db_job_free(&jobs[i]);
    free(jobs);
    /* filters */
    for (int i = 0; i < 4; i++) move(db, ids[i], "queued", "running");
    move(db, ids[0], "running", "failed");
    CHECK(db_jobs_list(db, "running", NULL, 2, &jobs, &n, next, err) == 0 && n == 2 && next[0], "running page 1");
    int running_ok = n == 2 && !strcmp(jobs[0].id, ids[3]) && !strcmp(jobs[1].id, ids[2]);
    for (int i = 0; i < n; i++) db_job_free(&jobs[i]);
    free(jobs);
    CHECK(db_jobs_list(db, "running", next, 2, &jobs, &n, next, err) == 0 && n == 1 && !next[0], "running page 2");
    running_ok = running_ok && n == 1 && !strcmp(jobs[0].id, ids[1]) && !strcmp(jobs[0].state, "running");
    for (int i = 0; i < n; i++) db_job_free(&jobs[i]);
    free(jobs);
    CHECK(running_ok, "state filter returned the wrong jobs");
    CHECK(db_jobs_list(db, "queued", "", 500, &jobs, &n, next, err) == 0 && n == N - 4 + 1 && !next[0],
          "queued: %d", n);
    for (int i = 0; i < n; i++) db_job_free(&jobs[i]);
    free(jobs);
    CHECK(db_jobs_list(db, "paused", "", 10, &jobs, &n, next, err) == 0 && n == 0 && jobs == NULL && !next[0],
          "paused: %d", n);
    CHECK(db_jobs_list(db, NULL, "j0123456789abcdef", 10, &jobs, &n, next, err) == DB_NOT_FOUND && n == 0 &&
              strstr(err, "cursor"),
          "unknown cursor: %s", err);
    CHECK(db_jobs_list(db, "sleeping", "", 10, &jobs, &n, next, err) == DB_ERROR && strstr(err, "sleeping"),
          "unknown state: %s", err);
    CHECK(db_jobs_list(db, NULL, "", 0, &jobs, &n, next, err) == 0 && n == 1 && next[0], "limit 0 -> 1");
    for (int i = 0; i < n; i++) db_job_free(&jobs[i]);
    free(jobs);
    CHECK(db_jobs_list(db, NULL, "", 1 << 30, &jobs, &n, next, err) == 0 && n == N + 1 && !next[0], "huge limit");
    for (int i = 0; i < n; i++) db_job_free(&jobs[i]);
    free(jobs);

    TEST_CASE("jobs: counted by state");
    const char *states[] = {"queued", "running", "paused", "succeeded", "failed", "canceled"};
    const long want[] = {N - 4 + 1, 3, 0, 0, 1, 0};
    for (int i = 0; i < 6; i++) {
        long in_state = -1;
        CHECK(db_jobs_count(db, states[i], &in_state, err) == 0 && in_state == want[i], "%s: %ld, want %ld (%s)",
              states[i], in_state, want[i], err);
    }
    long in_state = -1;
    CHECK(db_jobs_count(db, "sleeping", &in_state, err) != 0 && strstr(err, "sleeping"), "unknown state: %s", err);
    db_close(db);
}

/* ---- transitions, claims, requests ---- */

static const char *const all_states[] = {"queued", "running", "paused", "succeeded", "failed", "canceled"};
static const char *const legal[][2] = {
    {"queued", "running"}, {"running", "succeeded"}, {"running", "failed"},   {"running", "paused"},
    {"paused", "queued"},  {"queued", "canceled"},   {"running", "canceled"}, {"running", "queued"},
};

static int is_legal(const char *from, const char *to) {
    for (size_t i = 0; i < sizeof legal / sizeof legal[0]; i++)
        if (!strcmp(legal[i][0], from) && !strcmp(legal[i][1], to)) return 1;
    return 0;
}

static void test_transitions(void) {
    char err[ERR_LEN];
    Db *db = open_or_die(tmp_path("transitions.db"), "migrations");

    TEST_CASE("transitions: every pair of states, legal ones only");
    for (int f = 0; f < 6; f++) {
        for (int t = 0; t < 6; t++) {
            const char *from = all_states[f], *to = all_states[t];
            char id[DB_ID_LEN], state[DB_STATE_LEN];
            job_in_state(db, from, id);
            job_state_of(db, id, state);
            CHECK(!strcmp(state, from), "setup: %s is %s", from, state);
            int before, after;
            DbEvent *events = all_events(db, id, &before);
            db_events_free(events, before);
            int rc = move(db, id, from, to);
            job_state_of(db, id, state);
            events = all_events(db, id, &after);
            if (is_legal(from, to)) {
                CHECK(rc == 0 && !strcmp(state, to), "%s -> %s: rc %d, now %s", from, to, rc, state);
                char expect[96];
                snprintf(expect, sizeof expect, "{\"state\":\"%s\",\"from\":\"%s\",", to, from);
                CHECK(after == before + 1 && !strcmp(events[after - 1].type, "state") &&
                          strstr(events[after - 1].data_json, expect),
                      "%s -> %s: event %s", from, to, after > 0 ? events[after - 1].data_json : "");
            } else {
                CHECK(rc == DB_CONFLICT && !strcmp(state, from), "%s -> %s: rc %d, now %s", from, to, rc, state);
                CHECK(after == before, "%s -> %s: an event for a refused transition", from, to);
            }
            db_events_free(events, after);
        }
    }

    TEST_CASE("transitions: the caller's from list, errors, unknown ids and states");
    char id[DB_ID_LEN], state[DB_STATE_LEN];
    job_in_state(db, "running", id);
    /* running -> canceled is legal, but not when the caller expects queued */
    CHECK(move(db, id, "queued", "canceled") == DB_CONFLICT, "from list ignored");
    const char *const either[] = {"queued", "running", NULL};
    CHECK(db_job_transition(db, id, either, "failed", "out of memory at step 3", err) == 0, "fail: %s", err);
    DbJob job;
    CHECK(db_job_get(db, id, &job, err) == 0 && !strcmp(job.state, "failed") &&
              !strcmp(job.error, "out of memory at step 3"),
          "error text: %s", job.error);
    CHECK(job.updated_at >= job.created_at, "updated_at");
    db_job_free(&job);
    int count;
    DbEvent *events = all_events(db, id, &count);
    CHECK(count > 0 && strstr(events[count - 1].data_json, "\"error\":\"out of memory at step 3\""), "event: %s",
          count > 0 ? events[count - 1].data_json : "");
    db_events_free(events, count);
    CHECK(move(db, "jffffffffffffffff", "queued", "running") == DB_NOT_FOUND, "unknown id");
    job_in_state(db, "queued", id);
    CHECK(db_job_transition(db, id, NULL, "running", NULL, err) == 0, "NULL from list: %s", err);
    CHECK(db_job_transition(db, id, NULL, "exploded", NULL, err) == DB_ERROR && strstr(err, "exploded"), "%s", err);
    job_state_of(db, id, state);
    CHECK(!strcmp(state, "running"), "state after errors: %s", state);

    TEST_CASE("requests: only of running jobs, cleared by the transition");
    job_in_state(db, "queued", id);
    CHECK(db_job_request(db, id, "pause", err) == DB_CONFLICT, "request of a queued job");
    move(db, id, "queued", "running");
    CHECK(db_job_request(db, id, "dance", err) == DB_ERROR, "unknown request accepted");
    CHECK(db_job_request(db, id, "pause", err) == 0, "pause: %s", err);
    CHECK(db_job_get(db, id, &job, err) == 0 && !strcmp(job.request, "pause"), "request %s", job.request);
    db_job_free(&job);
    CHECK(db_job_request(db, id, "cancel", err) == 0, "cancel after pause: %s", err);
    CHECK(db_job_get(db, id, &job, err) == 0 && !strcmp(job.request, "cancel"), "request %s", job.request);
    db_job_free(&job);
    CHECK(move(db, id, "running", "canceled") == 0, "cancel transition");
    CHECK(db_job_get(db, id, &job, err) == 0 && !job.request[0], "request kept: %s", job.request);
    db_job_free(&job);
    CHECK(db_job_request(db, "jffffffffffffffff", "pause", err) == DB_NOT_FOUND, "unknown id");

    TEST_CASE("progress");
    job_in_state(db, "running", id);
    CHECK(db_job_set_progress(db, id, 42, err) == 0, "progress: %s", err);
    CHECK(db_job_get(db, id, &job, err) == 0 && job.step == 42, "step %ld", job.step);
    db_job_free(&job);
    CHECK(db_job_set_progress(db, "jffffffffffffffff", 1, err) == DB_NOT_FOUND, "unknown id");
    db_close(db);

    TEST_CASE("claim: oldest queued first, by creation order");
    db = open_or_die(tmp_path("claim.db"), "migrations");
    char ids[5][DB_ID_LEN];
    for (int i = 0; i < 5; i++) create_job(db, ids[i]);
    move(db, ids[0], "queued", "running");
    move(db, ids[0], "running", "paused");
    move(db, ids[0], "paused", "queued"); /* resumed: keeps its place */
    move(db, ids[2], "queued", "canceled");
    const int order[] = {0, 1, 3, 4};
    for (int i = 0; i < 4; i++) {
        CHECK(db_job_claim_next(db, &job, err) == 0 && !strcmp(job.id, ids[order[i]]) &&
                  !strcmp(job.state, "running"),
              "claim %d: got %s", i, job.id);
        db_job_free(&job);
    }
    CHECK(db_job_claim_next(db, &job, err) == DB_NOT_FOUND && job.spec_json == NULL, "claim from an empty queue");
    db_close(db);
}

/* ---- two threads claiming from one queue ---- */

typedef struct {
    Db *db;
    char (*claimed)[DB_ID_LEN];
    int count, errors;
} Claimer;

static void *claim_all(void *arg) {
    Claimer *c = arg;
    char err[ERR_LEN];
    for (;;) {
        DbJob job;
        int rc = db_job_claim_next(c->db, &job, err);
        if (rc == DB_NOT_FOUND) break;
        if (rc != 0) {
            c->errors++;
            fprintf(stderr, "  claim: %s\n", err);
            break;
        }
        memcpy(c->claimed[c->count++], job.id, DB_ID_LEN);
        db_job_free(&job);
    }
    return NULL;
}

static void test_claim_concurrency(void) {
    TEST_CASE("claim: two threads take 50 queued jobs, each exactly once");
    Db *db = open_or_die(tmp_path("claim2.db"), "migrations");
    enum { N = 50 };
    char ids[N][DB_ID_LEN];
    for (int i = 0; i < N; i++) create_job(db, ids[i]);
    Claimer c[2];
    pthread_t threads[2];
    for (int t = 0; t < 2; t++) {
        c[t] = (Claimer){db, calloc(N, DB_ID_LEN), 0, 0};
        pthread_create(&threads[t], NULL, claim_all, &c[t]);
    }
    for (int t = 0; t < 2; t++) pthread_join(threads[t], NULL);
    CHECK(c[0].errors + c[1].errors == 0, "claim errors");
    CHECK(c[0].count + c[1].count == N, "claimed %d + %d", c[0].count, c[1].count);
    int found_once = 0;
    for (int i = 0; i < N; i++) {
        int hits = 0;
        for (int t = 0; t < 2; t++)
            for (int k = 0; k < c[t].count; k++) hits += strcmp(c[t].claimed[k], ids[i]) == 0;
        found_once += hits == 1;
        char state[DB_STATE_LEN];
        job_state_of(db, ids[i], state);
        CHECK(!strcmp(state, "running"), "job %d is %s", i, state);
    }
    CHECK(found_once == N, "%d of %d jobs claimed exactly once", found_once, N);
    free(c[0].claimed);
    free(c[1].claimed);
    db_close(db);
}

/* ---- metrics ---- */

static void insert_series(Db *db, const char *id, const char *name, long first, long last, double offset) {
    DbMetric points[64];
    int n = 0;
    char err[ERR_LEN];
    for (long s = first; s <= last; s++) {
        memset(&points[n], 0, sizeof points[n]);
        snprintf(points[n].name, sizeof points[n].name, "%s", name);
        points[n].step = s;
        points[n].value = (double)s + offset;
        points[n].time = 1000.0 + (double)s;
        n++;
    }
    if (db_metrics_insert(db, id, points, n, err) != 0) {
        fprintf(stderr, "metrics insert: %s\n", err);
        exit(2);
    }
}

static long metric_rows(const char *path, const char *id) {
    return raw_long(path, "SELECT COUNT(*) FROM metrics WHERE job_id = ?", id);
}

static int metric_cmp(const void *a, const void *b) {
    const DbMetric *x = a, *y = b;
    if (x->step != y->step) return x->step < y->step ? -1 : 1;
    return strcmp(x->name, y->name);
}

/* The naive reference of db_metrics_buckets over points sorted by (name, step). */
static int naive_buckets(const DbMetric *all, int total, const char *const *names, int num_names, long from, long to,
                         int buckets, DbMetric *out, long *width) {
    long lo = -1, hi = -1;
    for (int i = 0; i < total; i++) {
        int named = num_names == 0;
        for (int k = 0; k < num_names; k++) named |= !strcmp(all[i].name, names[k]);
        if (!named || all[i].step < from || all[i].step > to) continue;
        if (lo < 0 || all[i].step < lo) lo = all[i].step;
        if (all[i].step > hi) hi = all[i].step;
    }
    *width = 1;
    if (lo < 0) return 0;
    *width = (hi - lo) / buckets + 1;
    int n = 0;
    for (int i = 0; i < total;) { /* one (name, bucket) run at a time */
        long b = (all[i].step - lo) / *width;
        int j = i;
        while (j < total && !strcmp(all[j].name, all[i].name) && (all[j].step - lo) / *width == b) j++;
        int named = num_names == 0;
        for (int k = 0; k < num_names; k++) named |= !strcmp(all[i].name, names[k]);
        int least = -1, most = -1, null = -1;
        for (int k = i; k < j && named; k++) {
            if (all[k].step < lo || all[k].step > hi) continue;
            if (isnan(all[k].value)) {
                if (null < 0) null = k;
                continue;
            }
            if (least < 0 || all[k].value < all[least].value) least = k;
            if (most < 0 || all[k].value > all[most].value) most = k;
        }
        int picked[3] = {least, most, null};
        for (int k = 0; k < 3; k++)
            if (picked[k] >= 0 && (k < 1 || picked[k] != picked[0]) && (k < 2 || picked[k] != picked[1]))
                out[n++] = all[picked[k]];
        i = j;
    }
    qsort(out, (size_t)n, sizeof *out, metric_cmp);
    return n;
}

static void check_buckets(Db *db) {
    char err[ERR_LEN], id[DB_ID_LEN];
    job_in_state(db, "running", id);
    enum { STEPS = 5000 };
    static DbMetric all[3 * STEPS];
    int total = 0;
    uint64_t state = 12345;
    const char *series[] = {"loss", "lr", "val_top1"}; /* in name order */
    for (int s = 0; s < 3; s++) {
        for (long step = 1; step <= STEPS; step++) {
            if (s == 2 && step % 250) continue; /* an evaluation every 250 steps */
            state = state * 6364136223846793005ULL + 1442695040888963407ULL;
            DbMetric *m = &all[total++];
            snprintf(m->name, sizeof m->name, "%s", series[s]);
            m->step = step;
            m->value = (double)(state >> 11) / 9007199254740992.0; /* distinct values: no ties */
            if (s == 0 && ((step >= 2000 && step < 2100) || step == 3333 || step == 4999)) m->value = NAN;
            m->time = 1000.0 + (double)step;
        }
    }
    CHECK(db_metrics_insert(db, id, all, total, err) == 0, "insert: %s", err);
    static DbMetric expect[3 * STEPS];
    const char *loss_only[] = {"loss"}, *two[] = {"loss", "val_top1"};
    struct {
        const char *const *names;
        int num_names;
        long from, to;
        int buckets;
    } cases[] = {
        {NULL, 0, 0, 4000000000000000000L, 100},   {NULL, 0, 0, 4000000000000000000L, 1},
        {NULL, 0, 0, 4000000000000000000L, 9999},  {loss_only, 1, 0, 4000000000000000000L, 37},
        {loss_only, 1, 1990, 2120, 10},            {two, 2, 1200, 3600, 64},
        {NULL, 0, 4990, 4000000000000000000L, 3},  {NULL, 0, 6000, 7000, 10},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        DbMetric *points;
        int n;
        long width, expect_width;
        int expected = naive_buckets(all, total, cases[c].names, cases[c].num_names, cases[c].from, cases[c].to,
                                     cases[c].buckets, expect, &expect_width);
        if (db_metrics_buckets(db, id, cases[c].names, cases[c].num_names, cases[c].from, cases[c].to,
                               cases[c].buckets, &points, &n, &width, err) != 0) {
            CHECK(0, "case %zu: %s", c, err);
            continue;
        }
        int same = n == expected && width == expect_width;
        for (int i = 0; same && i < n; i++)
            same = points[i].step == expect[i].step && !strcmp(points[i].name, expect[i].name) &&
                   (points[i].value == expect[i].value || (isnan(points[i].value) && isnan(expect[i].value))) &&
                   points[i].time == expect[i].time;
        CHECK(same, "case %zu: %d points of width %ld, expected %d of width %ld", c, n, width, expected,
              expect_width);
        free(points);
    }
    /* few enough points per bucket: the whole range, every point */
    DbMetric *points;
    int n;
    long width;
    CHECK(db_metrics_buckets(db, id, loss_only, 1, 100, 299, 100, &points, &n, &width, err) == 0 && n == 200 &&
              width == 2,
          "a range of 2 points per bucket: %d points, width %ld", n, width);
    free(points);
    CHECK(db_metrics_buckets(db, id, NULL, 0, 0, 10, 0, &points, &n, &width, err) == DB_ERROR &&
              strstr(err, "buckets"),
          "0 buckets: %s", err);
    CHECK(db_metrics_buckets(db, "jffffffffffffffff", NULL, 0, 0, 10, 5, &points, &n, &width, err) == DB_NOT_FOUND,
          "unknown job");
}

static void test_metrics(void) {
    char err[ERR_LEN];
    const char *path = tmp_path("metrics.db");
    Db *db = open_or_die(path, "migrations");
    char id[DB_ID_LEN];
    job_in_state(db, "running", id);

    TEST_CASE("metrics: each (job, name, step) stored once, repeats ignored");
    insert_series(db, id, "loss", 1, 20, 0.0);
    insert_series(db, id, "lr", 1, 20, 100.0);
    insert_series(db, id, "loss", 15, 25, 0.5); /* 15..20 repeat with other values: ignored */
    CHECK(metric_rows(path, id) == 45, "rows %ld", metric_rows(path, id));
    DbMetric *points;
    int n;
    CHECK(db_metrics_page(db, id, NULL, 0, 0, 10000, &points, &n, err) == 0 && n == 45, "all: %d %s", n, err);
    int ordered = 1, values_ok = 1;
    for (int i = 0; i < n; i++) {
        if (i > 0 && (points[i].step < points[i - 1].step ||
                      (points[i].step == points[i - 1].step && strcmp(points[i].name, points[i - 1].name) <= 0)))
            ordered = 0;
        double expect = (double)points[i].step + (strcmp(points[i].name, "lr") == 0 ? 100.0
                                                  : points[i].step > 20    ? 0.5
                                                                           : 0.0);
        if (points[i].value != expect || points[i].time != 1000.0 + (double)points[i].step) values_ok = 0;
    }
    CHECK(ordered, "not ordered by (step, name)");
    CHECK(values_ok, "a repeat replaced a stored value");
    free(points);
    DbMetric nan_point = {.name = "grad_norm", .step = 3, .value = NAN, .time = 1.0};
    CHECK(db_metrics_insert(db, id, &nan_point, 1, err) == 0, "NaN: %s", err);
    const char *grad[] = {"grad_norm"};
    CHECK(db_metrics_page(db, id, grad, 1, 0, 10, &points, &n, err) == 0 && n == 1 && isnan(points[0].value),
          "NaN round trip");
    free(points);
    CHECK(db_metrics_insert(db, "jffffffffffffffff", &nan_point, 1, err) == DB_NOT_FOUND, "unknown job: %s", err);
    DbMetric unnamed = {.name = "", .step = 1};
    CHECK(db_metrics_insert(db, id, &unnamed, 1, err) == DB_ERROR, "a point without a name");
    CHECK(db_metrics_insert(db, id, NULL, 0, err) == 0, "an empty batch");

    TEST_CASE("metrics: pages by after_step end on step boundaries, names filter");
    const char *both[] = {"loss", "lr"};
    for (int limit = 1; limit <= 7; limit++) {
        long after = 0;
        int total = 0, pages = 0, whole_steps = 1, ok = 1;
        for (;;) {
            if (db_metrics_page(db, id, both, 2, after, limit, &points, &n, err) != 0) {
                CHECK(0, "page: %s", err);
                break;
            }
            if (n == 0) break;
            pages++;
            for (int i = 0; i < n; i++) {
                if (points[i].step <= after) ok = 0;
                /* steps 1..20 have both names: a page never holds half of one */
                if (points[i].step <= 20 && (i == n - 1 || points[i + 1].step != points[i].step) &&
                    (i == 0 || points[i - 1].step != points[i].step))
                    whole_steps = 0;
            }
            if (n > limit && !(limit < 2 && n == 2)) ok = 0;
            total += n;
            after = points[n - 1].step;
            free(points);
            if (pages > 100) break;
        }
        CHECK(ok && whole_steps && total == 45, "limit %d: %d points in %d pages, ok %d, whole %d", limit, total,
              pages, ok, whole_steps);
    }
    const char *lr[] = {"lr"};
    CHECK(db_metrics_page(db, id, lr, 1, 18, 100, &points, &n, err) == 0 && n == 2 && points[0].step == 19 &&
              !strcmp(points[0].name, "lr") && points[1].step == 20,
          "lr after 18: %d", n);
    free(points);
    const char *none[] = {"val_top1"};
    CHECK(db_metrics_page(db, id, none, 1, 0, 100, &points, &n, err) == 0 && n == 0, "unknown name: %d", n);
    free(points);
    CHECK(db_metrics_page(db, id, both, 2, 20, 0, &points, &n, err) == 0 && n == 1 && points[0].step == 21,
          "limit 0 means 1");
    free(points);
    CHECK(db_metrics_page(db, "jffffffffffffffff", NULL, 0, 0, 10, &points, &n, err) == DB_NOT_FOUND,
          "unknown job");

    TEST_CASE("metrics: display buckets match a naive reference (min, max, first null per bucket)");
    check_buckets(db);

    TEST_CASE("checkpoints: recorded, listed oldest first, the job points at the latest");
    CHECK(db_checkpoint_record(db, id, 10, "/ckpt/10.safetensors", err) == 0, "record: %s", err);
    CHECK(db_checkpoint_record(db, id, 20, "/ckpt/20.safetensors", err) == 0, "record: %s", err);
    CHECK(db_checkpoint_record(db, id, 5, "/ckpt/5.safetensors", err) == 0, "record: %s", err);
    DbJob job;
    CHECK(db_job_get(db, id, &job, err) == 0 && job.checkpoint_step == 20 &&
              !strcmp(job.checkpoint_path, "/ckpt/20.safetensors"),
          "job checkpoint %ld %s", job.checkpoint_step, job.checkpoint_path);
    db_job_free(&job);
    long *steps;
    char **paths;
    int count;
    CHECK(db_checkpoints_list(db, id, &steps, &paths, &count, err) == 0 && count == 3, "list: %d %s", count, err);
    if (count == 3)
        CHECK(steps[0] == 5 && steps[1] == 10 && steps[2] == 20 && !strcmp(paths[1], "/ckpt/10.safetensors"),
              "order");
    for (int i = 0; i < count; i++) free(paths[i]);
    free(paths);
    free(steps);
    CHECK(db_checkpoint_record(db, "jffffffffffffffff", 1, "/x", err) == DB_NOT_FOUND, "unknown job: %s", err);
    CHECK(db_checkpoints_list(db, "jffffffffffffffff", &steps, &paths, &count, err) == DB_NOT_FOUND, "unknown job");
    db_close(db);
}

/* ---- recovery and deletion ---- */

static void metric_event(Db *db, const char *id, long s, long *event_id) {
    char err[ERR_LEN], data[64];
    snprintf(data, sizeof data, "{\"step\": %ld, \"loss\": %ld}", s, s);
    if (db_event_append(db, id, "metric", s, data, event_id, err) != 0) {
        fprintf(stderr, "event append: %s\n", err);
        exit(2);
    }
}

static long max_metric_step(const char *path, const char *id) {
    return raw_long(path, "SELECT COALESCE(MAX(step), -1) FROM metrics WHERE job_id = ?", id);
}

static void test_recover_and_delete(void) {
    char err[ERR_LEN];
    const char *path = tmp_path("recover.db");
    Db *db = open_or_die(path, "migrations");

    TEST_CASE("recover: running jobs go back to the queue at their checkpoint, or carry out a pause or cancel");
    char with_ckpt[DB_ID_LEN], without[DB_ID_LEN], queued[DB_ID_LEN], done[DB_ID_LEN];
    char to_pause[DB_ID_LEN], to_cancel[DB_ID_LEN];
    job_in_state(db, "running", with_ckpt);
    job_in_state(db, "running", without);
    job_in_state(db, "running", to_pause);
    job_in_state(db, "running", to_cancel);
    job_in_state(db, "queued", queued);
    job_in_state(db, "succeeded", done);
    insert_series(db, with_ckpt, "loss", 1, 15, 0);
    insert_series(db, with_ckpt, "lr", 1, 15, 0);
    long event_id;
    for (long s = 1; s <= 15; s++) metric_event(db, with_ckpt, s, &event_id);
    CHECK(db_checkpoint_record(db, with_ckpt, 10, "/ckpt/a-10", err) == 0, "%s", err);
    db_job_set_progress(db, with_ckpt, 15, err);
    for (int i = 0; i < 2; i++) { /* asked to pause or cancel; the daemon died before the worker did it */
        const char *id = i ? to_cancel : to_pause;
        insert_series(db, id, "loss", 1, 8, 0);
        CHECK(db_checkpoint_record(db, id, 5, "/ckpt/b-5", err) == 0, "%s", err);
        db_job_set_progress(db, id, 8, err);
        CHECK(db_job_request(db, id, i ? "cancel" : "pause", err) == 0, "%s", err);
    }
    insert_series(db, without, "loss", 1, 5, 0);
    db_job_set_progress(db, without, 5, err);
    insert_series(db, queued, "loss", 1, 3, 0); /* not running: untouched */
    insert_series(db, done, "loss", 1, 4, 0);
    int before_events, after_events;
    DbEvent *events = all_events(db, with_ckpt, &before_events);
    db_events_free(events, before_events);

    DbRecovered rec = {-1, -1, -1};
    CHECK(db_recover(db, &rec, err) == 0 && rec.requeued == 2 && rec.paused == 1 && rec.canceled == 1,
          "recover: %d re-queued, %d paused, %d canceled %s", rec.requeued, rec.paused, rec.canceled, err);
    DbJob job;
    CHECK(db_job_get(db, with_ckpt, &job, err) == 0 && !strcmp(job.state, "queued") && job.step == 10 &&
              job.checkpoint_step == 10 && !job.request[0],
          "with checkpoint: %s step %ld request %s", job.state, job.step, job.request);
    db_job_free(&job);
    CHECK(max_metric_step(path, with_ckpt) == 10 && metric_rows(path, with_ckpt) == 20, "metrics to %ld (%ld rows)",
          max_metric_step(path, with_ckpt), metric_rows(path, with_ckpt));
    events = all_events(db, with_ckpt, &after_events);
    CHECK(after_events == before_events + 1 && strstr(events[after_events - 1].data_json,
                                                      "{\"state\":\"queued\",\"from\":\"running\",\"error\":null,"
                                                      "\"step\":10}"),
          "recovery event: %s", after_events > 0 ? events[after_events - 1].data_json : "");
    db_events_free(events, after_events);
    CHECK(db_job_get(db, without, &job, err) == 0 && !strcmp(job.state, "queued") && job.step == 0,
          "without checkpoint: %s step %ld", job.state, job.step);
    db_job_free(&job);
    CHECK(metric_rows(path, without) == 0, "metrics of a job without checkpoint kept");
    CHECK(metric_rows(path, queued) == 3 && metric_rows(path, done) == 4, "other jobs' metrics touched");
    CHECK(db_job_get(db, to_pause, &job, err) == 0 && !strcmp(job.state, "paused") && job.step == 5 &&
              !job.request[0] && max_metric_step(path, to_pause) == 5,
          "a pause asked for: %s at step %ld, request \"%s\", metrics to %ld", job.state, job.step, job.request,
          max_metric_step(path, to_pause));
    db_job_free(&job);
    CHECK(db_job_get(db, to_cancel, &job, err) == 0 && !strcmp(job.state, "canceled") && job.step == 8 &&
              !job.request[0] && metric_rows(path, to_cancel) == 8,
          "a cancel asked for: %s at step %ld, request \"%s\", %ld metric rows", job.state, job.step, job.request,
          metric_rows(path, to_cancel));
    db_job_free(&job);
    char state[DB_STATE_LEN];
    job_state_of(db, done, state);
    CHECK(!strcmp(state, "succeeded"), "a finished job moved: %s", state);
    /* the resumed run recomputes steps 11..15: the metric events are ignored, the metrics return */
    for (long s = 11; s <= 15; s++) {
        metric_event(db, with_ckpt, s, &event_id);
        CHECK(event_id == 0, "metric event of step %ld stored twice", s);
    }
    metric_event(db, with_ckpt, 16, &event_id);
    CHECK(event_id > 0, "a new step's event was ignored");
    insert_series(db, with_ckpt, "loss", 11, 15, 0);
    CHECK(metric_rows(path, with_ckpt) == 25, "rows %ld", metric_rows(path, with_ckpt));
    CHECK(db_recover(db, &rec, err) == 0 && rec.requeued == 0 && rec.paused == 0 && rec.canceled == 0,
          "second recover: %d re-queued, %d paused, %d canceled", rec.requeued, rec.paused, rec.canceled);

    TEST_CASE("delete: finished jobs only, with their metrics, checkpoints and events");
    const char *unfinished[] = {"queued", "running", "paused"};
    for (int i = 0; i < 3; i++) {
        char id[DB_ID_LEN];
        job_in_state(db, unfinished[i], id);
        CHECK(db_job_delete(db, id, NULL, err) == DB_CONFLICT && strstr(err, unfinished[i]), "delete of a %s job: %s",
              unfinished[i], err);
        job_state_of(db, id, state);
        CHECK(!strcmp(state, unfinished[i]), "state changed by a refused delete");
    }
    const char *finished[] = {"succeeded", "failed", "canceled"};
    for (int i = 0; i < 3; i++) {
        char id[DB_ID_LEN];
        job_in_state(db, finished[i], id);
        insert_series(db, id, "loss", 1, 5, 0);
        db_checkpoint_record(db, id, 5, "/ckpt/x", err);
        metric_event(db, id, 5, &event_id);
        CHECK(db_job_delete(db, id, NULL, err) == 0, "delete of a %s job: %s", finished[i], err);
        CHECK(db_job_get(db, id, &job, err) == DB_NOT_FOUND, "still there");
        CHECK(metric_rows(path, id) == 0 &&
                  raw_long(path, "SELECT COUNT(*) FROM checkpoints WHERE job_id = ?", id) == 0 &&
                  raw_long(path, "SELECT COUNT(*) FROM events WHERE job_id = ?", id) == 0,
              "rows left after deleting a %s job", finished[i]);
    }
    CHECK(metric_rows(path, done) == 4, "another job's rows deleted");

    TEST_CASE("delete: refused while an unfinished job names the job's weights as its teacher");
    char teacher[DB_ID_LEN], student[DB_ID_LEN];
    job_in_state(db, "succeeded", teacher);
    CHECK(db_job_create(db, "distill", "{\"kind\":\"distill\",\"teacher\":\"/d/runs/T/weights.safetensors\"}", 100,
                        &job, err) == 0, "create: %s", err);
    memcpy(student, job.id, DB_ID_LEN);
    db_job_free(&job);
    CHECK(db_job_delete(db, teacher, "/d/runs/T/weights.safetensors", err) == DB_CONFLICT && strstr(err, student) &&
              strstr(err, "queued"), "delete of a queued job's teacher: %s", err);
    CHECK(db_job_get(db, teacher, &job, err) == 0, "the teacher is gone: %s", err);
    db_job_free(&job);
    move(db, student, "queued", "canceled");
    CHECK(db_job_delete(db, teacher, "/d/runs/T/weights.safetensors", err) == 0, "after its student ended: %s", err);
    CHECK(db_job_delete(db, "jffffffffffffffff", NULL, err) == DB_NOT_FOUND, "unknown id");
    db_close(db);
}

/* ---- events ---- */

static void test_events(void) {
    char err[ERR_LEN];
    Db *db = open_or_die(tmp_path("events.db"), "migrations");
    char id[DB_ID_LEN], other[DB_ID_LEN];
    create_job(db, id);
    create_job(db, other);

    TEST_CASE("events: increasing ids, one metric/eval event per step");
    long ids[8], last = 0;
    int increasing = 1;
    for (int i = 0; i < 8; i++) {
        char data[64];
        snprintf(data, sizeof data, "{\"line\": \"log %d\"}", i);
        CHECK(db_event_append(db, i % 2 ? other : id, "log", -1, data, &ids[i], err) == 0, "append: %s", err);
        if (ids[i] <= last) increasing = 0;
        last = ids[i];
    }
    CHECK(increasing, "ids do not increase");
    long first, repeat, eval;
    CHECK(db_event_append(db, id, "metric", 3, "{\"loss\": 1}", &first, err) == 0 && first > last, "metric: %s", err);
    CHECK(db_event_append(db, id, "metric", 3, "{\"loss\": 1}", &repeat, err) == 0 && repeat == 0, "repeat %ld",
          repeat);
    CHECK(db_event_append(db, id, "eval", 3, "{\"top1\": 0.5}", &eval, err) == 0 && eval > first, "eval: %s", err);
    CHECK(db_event_append(db, id, "eval", 3, "{\"top1\": 0.5}", &repeat, err) == 0 && repeat == 0, "eval repeat");
    CHECK(db_event_append(db, other, "metric", 3, "{\"loss\": 2}", &repeat, err) == 0 && repeat > eval,
          "same step, other job: %ld", repeat);
    long log_id;
    CHECK(db_event_append(db, id, "log", -1, "{\"line\": \"same\"}", &log_id, err) == 0 && log_id > 0 &&
              db_event_append(db, id, "log", -1, "{\"line\": \"same\"}", &repeat, err) == 0 && repeat > log_id,
          "log lines are never deduplicated");

    TEST_CASE("events: bad appends are refused");
    long ignored;
    CHECK(db_event_append(db, id, "gossip", -1, "{}", &ignored, err) == DB_ERROR && strstr(err, "gossip"), "%s", err);
    CHECK(db_event_append(db, id, "log", 5, "{}", &ignored, err) == DB_ERROR, "a log event with a step");
    CHECK(db_event_append(db, id, "metric", -1, "{}", &ignored, err) == DB_ERROR, "a metric event without a step");
    CHECK(db_event_append(db, id, "log", -1, "{\"unterminated\": ", &ignored, err) == DB_ERROR, "broken JSON");
    CHECK(db_event_append(db, id, "log", -1, "[1, 2]", &ignored, err) == DB_ERROR, "a JSON array");
    CHECK(db_event_append(db, "jffffffffffffffff", "log", -1, "{}", &ignored, err) == DB_NOT_FOUND, "unknown job");

    TEST_CASE("events: paging with events_after sees each event of the job once, in order");
    int expected, count;
    DbEvent *events = all_events(db, id, &expected);
    db_events_free(events, expected);
    CHECK(expected == 1 + 4 + 1 + 1 + 2, "events of the job: %d", expected); /* submission, logs, metric, eval, 2 logs */
    long after = 0;
    int seen = 0, ok = 1;
    for (int pages = 0; pages < 50; pages++) {
        CHECK(db_events_after(db, id, after, -1, 2, &events, &count, err) == 0, "%s", err);
        if (count == 0) break;
        if (count > 2) ok = 0;
        for (int i = 0; i < count; i++) {
            if (events[i].id <= after || strcmp(events[i].job_id, id) != 0) ok = 0;
            after = events[i].id;
        }
        seen += count;
        db_events_free(events, count);
    }
    CHECK(ok && seen == expected, "paged %d of %d, ok %d", seen, expected, ok);
    CHECK(db_events_after(db, id, after, -1, 10, &events, &count, err) == 0 && count == 0, "past the end");
    CHECK(db_events_after(db, "jffffffffffffffff", 0, -1, 10, &events, &count, err) == DB_NOT_FOUND, "unknown job");

    TEST_CASE("events: after_step leaves out the metric and eval events up to that step, nothing else");
    for (long after_step = 1; after_step <= 4; after_step++) {
        CHECK(db_events_after(db, id, 0, after_step, 100, &events, &count, err) == 0, "%s", err);
        int metrics = 0, others = 0;
        for (int i = 0; i < count; i++) {
            if (!strcmp(events[i].type, "metric") || !strcmp(events[i].type, "eval")) metrics++;
            else others++;
        }
        db_events_free(events, count);
        int want = after_step < 3 ? 2 : 0; /* the metric and eval events are at step 3 */
        CHECK(metrics == want && others == expected - 2, "after step %ld: %d metric/eval events (want %d), %d others",
              after_step, metrics, want, others);
    }
    db_close(db);
}

/* ---- concurrency ---- */

typedef struct {
    Db *db;
    int index;
    double stop_at;
    int errors, operations;
} Worker;

static void note_error(Worker *w, const char *what, int rc, const char *err) {
    if (rc == DB_ERROR) {
        if (w->errors++ < 5) fprintf(stderr, "  thread %d: %s: %s\n", w->index, what, err);
    }
}

/* Mixed traffic: submit, claim, progress, metrics, events, reads, finish,
 * delete. Another thread may claim or delete a job we made: DB_NOT_FOUND and
 * DB_CONFLICT are fine here, DB_ERROR never is. */
static void *mixed_traffic(void *arg) {
    Worker *w = arg;
    char err[ERR_LEN];
    long s = 0;
    while (now_seconds() < w->stop_at) {
        DbJob job;
        int rc = db_job_create(w->db, "train", "{}", 100, &job, err);
        note_error(w, "create", rc, err);
        if (rc != 0) continue;
        char mine[DB_ID_LEN];
        memcpy(mine, job.id, DB_ID_LEN);
        db_job_free(&job);
        DbMetric points[8];
        for (int i = 0; i < 8; i++) {
            memset(&points[i], 0, sizeof points[i]);
            snprintf(points[i].name, sizeof points[i].name, "m%d", i % 2);
            points[i].step = s + i / 2;
            points[i].value = (double)i;
        }
        note_error(w, "metrics", db_metrics_insert(w->db, mine, points, 8, err), err);
        long event_id;
        note_error(w, "event", db_event_append(w->db, mine, "metric", s, "{\"x\": 1}", &event_id, err), err);
        s += 4;
        rc = db_job_claim_next(w->db, &job, err);
        note_error(w, "claim", rc, err);
        if (rc == 0) {
            note_error(w, "progress", db_job_set_progress(w->db, job.id, 7, err), err);
            note_error(w, "checkpoint", db_checkpoint_record(w->db, job.id, 7, "/ckpt", err), err);
            const char *const running[] = {"running", NULL};
            note_error(w, "finish", db_job_transition(w->db, job.id, running, "succeeded", NULL, err), err);
            if (w->operations % 3 == 0) note_error(w, "delete", db_job_delete(w->db, job.id, NULL, err), err);
            db_job_free(&job);
        }
        DbJob *jobs;
        int n;
        char next[DB_ID_LEN];
        rc = db_jobs_list(w->db, w->index % 2 ? "succeeded" : NULL, "", 20, &jobs, &n, next, err);
        note_error(w, "list", rc, err);
        if (rc == 0) {
            for (int i = 0; i < n; i++) db_job_free(&jobs[i]);
            free(jobs);
        }
        DbMetric *page;
        rc = db_metrics_page(w->db, mine, NULL, 0, -1, 100, &page, &n, err);
        note_error(w, "metrics page", rc, err);
        if (rc == 0) free(page);
        DbEvent *events;
        rc = db_events_after(w->db, mine, 0, -1, 100, &events, &n, err);
        note_error(w, "events", rc, err);
        if (rc == 0) db_events_free(events, n);
        w->operations++;
    }
    return NULL;
}

typedef struct {
    const char *path;
    int locked; /* set (atomically) once the lock is held */
    double held_until;
} LockHolder;

/* Another connection (another process, in real life) holding the write lock. */
static void *hold_write_lock(void *arg) {
    LockHolder *h = arg;
    sqlite3 *conn = raw_open(h->path);
    sqlite3_exec(conn, "BEGIN IMMEDIATE", NULL, NULL, NULL);
    __atomic_store_n(&h->locked, 1, __ATOMIC_RELEASE);
    usleep(300 * 1000);
    h->held_until = now_seconds();
    sqlite3_exec(conn, "COMMIT", NULL, NULL, NULL);
    sqlite3_close(conn);
    return NULL;
}

static void test_concurrency(void) {
    TEST_CASE("concurrency: 4 threads of mixed traffic for a second, no errors");
    const char *path = tmp_path("busy.db");
    Db *db = open_or_die(path, "migrations");
    Worker workers[4];
    pthread_t threads[4];
    double stop_at = now_seconds() + 1.0;
    for (int t = 0; t < 4; t++) {
        workers[t] = (Worker){db, t, stop_at, 0, 0};
        pthread_create(&threads[t], NULL, mixed_traffic, &workers[t]);
    }
    int errors = 0, operations = 0;
    for (int t = 0; t < 4; t++) {
        pthread_join(threads[t], NULL);
        errors += workers[t].errors;
        operations += workers[t].operations;
    }
    CHECK(errors == 0, "%d errors", errors);
    CHECK(operations >= 4, "only %d rounds", operations);
    char err[ERR_LEN];
    long bad = raw_long(path,
                        "SELECT COUNT(*) FROM (SELECT job_id, type, step FROM events WHERE step >= 0 "
                        "GROUP BY job_id, type, step HAVING COUNT(*) > 1)",
                        NULL);
    CHECK(bad == 0, "%ld duplicated metric events", bad);

    TEST_CASE("concurrency: a write waits out another connection's lock (busy_timeout)");
    LockHolder holder = {path, 0, 0.0};
    pthread_t thread;
    pthread_create(&thread, NULL, hold_write_lock, &holder);
    while (!__atomic_load_n(&holder.locked, __ATOMIC_ACQUIRE)) usleep(1000);
    DbJob job;
    int rc = db_job_create(db, "train", "{}", 1, &job, err);
    double done = now_seconds();
    pthread_join(thread, NULL);
    CHECK(rc == 0, "create while locked: %s", err);
    CHECK(done >= holder.held_until - 0.01, "the write did not wait for the lock");
    if (rc == 0) db_job_free(&job);
    db_close(db);
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

int main(void) {
    if (!mkdtemp(tmp_dir)) {
        perror("mkdtemp");
        return 2;
    }
    double start = now_seconds();
    test_migrations();
    test_jobs();
    test_transitions();
    test_claim_concurrency();
    test_metrics();
    test_recover_and_delete();
    test_events();
    test_concurrency();
    fprintf(stderr, "  (%.1f s)\n", now_seconds() - start);
    nftw(tmp_dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
    return test_finish();
}
