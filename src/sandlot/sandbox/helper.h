/* Shared by helper.c and helper_gvisor.c: one binary, built by helper.py. */
#ifndef SANDLOT_HELPER_H
#define SANDLOT_HELPER_H

#include <linux/filter.h>
#include <sys/types.h>

#define HELPER_FAILURE 125

/* The status channel's line kinds: the protocol is specified once, in sandbox/protocol.py
 * (StatusLine there has the same letters; tests/test_protocol.py checks they agree). */
#define STATUS_READY "R"      /* "R": waiting for the command message */
#define STATUS_EXEC_ERROR "E" /* "E <errno> <step>": setting up or starting the program failed */
#define STATUS_STARTED "S"    /* "S": the program is forked, setup is complete */
#define STATUS_EXITED "X"     /* "X <have> <wstatus>": the final report, everything reaped */

/* Report "sandlot-helper: WHAT ARG: strerror(errno)" on stderr and exit HELPER_FAILURE. */
void die(const char *what, const char *arg);

/* Reap every child (blocking, or not); when the program is done, kill everything it started.
 * Returns 1 once none is left. */
int reap(pid_t child, int *main_status, int *have_main, int block);

/* helper_gvisor.c */
void read_filter(const char *path, struct sock_fprog *prog);
void keep_only_cap_kill(void);
void relay_pipes(int out[2], int err[2], long uid, long gid);
void supervise(pid_t child, int sigchld_fd, int out, int err, int signal_fd, int *main_status, int *have_main);

#endif
