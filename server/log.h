/* log.h - levelled log lines on stderr: "2026-11-28T06:50:01Z INFO  message". */
#ifndef DISTILLD_LOG_H
#define DISTILLD_LOG_H

enum { LOG_DEBUG = 0, LOG_INFO = 1, LOG_WARN = 2, LOG_ERROR = 3 };

void log_set_level(int level);
void log_msg(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
