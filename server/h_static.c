/* h_static.c - the dashboard: GET / is web_dir/index.html, GET /x/y a file
 * under web_dir. A path with a ".." or hidden segment is refused, and what it
 * resolves to (realpath) must still lie inside web_dir. Without a built
 * dashboard, / is a short built-in page saying so. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "http.h"

static const char not_built_page[] =
    "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>distilld</title></head>\n"
    "<body><h1>distilld</h1><p>The dashboard is not built. The API is at <a href=\"/api/v1/health\">/api/v1/</a>.</p>"
    "</body></html>\n";

static const char *content_type(const char *path) {
    static const struct { const char *ext, *type; } types[] = {
        {".html", "text/html; charset=utf-8"}, {".js", "text/javascript; charset=utf-8"},
        {".mjs", "text/javascript; charset=utf-8"}, {".css", "text/css; charset=utf-8"},
        {".json", "application/json"}, {".map", "application/json"}, {".svg", "image/svg+xml"},
        {".png", "image/png"}, {".ico", "image/x-icon"}, {".woff2", "font/woff2"}, {".txt", "text/plain; charset=utf-8"},
    };
    const char *dot = strrchr(path, '.');
    for (size_t i = 0; dot && i < sizeof types / sizeof types[0]; i++)
        if (strcmp(dot, types[i].ext) == 0) return types[i].type;
    return "application/octet-stream";
}

/* ".." and hidden names (".git", ".env") are never served. */
static int is_safe_relative(const char *path) {
    for (const char *p = path; *p;) {
        size_t n = strcspn(p, "/");
        if (n == 0 || p[0] == '.') return 0;
        p += n;
        if (*p == '/') p++;
    }
    return 1;
}

enum MHD_Result h_static(HttpRequest *r) {
    const char *rest = r->rest && r->rest[0] ? r->rest : "index.html";
    int is_index = strcmp(rest, "index.html") == 0;
    char root[PATH_MAX], path[PATH_MAX * 2], resolved[PATH_MAX];
    int fd = -1;
    if (r->cfg->web_dir && realpath(r->cfg->web_dir, root) && is_safe_relative(rest)) {
        snprintf(path, sizeof path, "%s/%s", root, rest);
        size_t n = strlen(root);
        if (realpath(path, resolved) && strncmp(resolved, root, n) == 0 && resolved[n] == '/')
            fd = open(resolved, O_RDONLY | O_CLOEXEC);
    }
    struct stat st;
    if (fd >= 0 && (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode))) {
        close(fd);
        fd = -1;
    }
    if (fd < 0) {
        if (!is_index) return http_reply_error(r, MHD_HTTP_NOT_FOUND, "not_found", "no such path: %s", r->url);
        struct MHD_Response *response =
            MHD_create_response_from_buffer(sizeof not_built_page - 1, (void *)not_built_page, MHD_RESPMEM_PERSISTENT);
        if (!response) return MHD_NO;
        MHD_add_response_header(response, MHD_HTTP_HEADER_CONTENT_TYPE, "text/html; charset=utf-8");
        return http_reply(r, MHD_HTTP_OK, response);
    }
    struct MHD_Response *response = MHD_create_response_from_fd64((uint64_t)st.st_size, fd);
    if (!response) {
        close(fd);
        return MHD_NO;
    }
    MHD_add_response_header(response, MHD_HTTP_HEADER_CONTENT_TYPE, content_type(resolved));
    MHD_add_response_header(response, "X-Content-Type-Options", "nosniff");
    return http_reply(r, MHD_HTTP_OK, response);
}
