/*
 * Sockets inside the container for trissh's forwarding (agent-sockets.c).
 */
#ifndef TRISSH_AGENT_SOCKETS_H
#define TRISSH_AGENT_SOCKETS_H

#include <stddef.h>

/* Seconds a socket request may take, name resolution and connect included. trissh waits
 * a little longer (trissh/backend/podman/sockets.py: ANSWER_TIMEOUT). */
#define SOCKET_REQUEST_TIMEOUT 10

/* Send one byte `byte` carrying the descriptor `fd` (SCM_RIGHTS); 0, or -1 with errno. */
int send_fd(int sock, char byte, int fd);

/* Whether the request message (NUL-separated words) names a socket request. */
int is_socket_request(const char *message, size_t length);

/* Serve one socket request on `line` and return the process's exit code. Runs in a child
 * the agent forked for it (name resolution and connect block); answers on `line` with one
 * byte "s" carrying the socket (SCM_RIGHTS), "ok\n" (unlink), or "error: REASON: TEXT\n",
 * REASON one of refused, unreachable, unknown_host, timeout, failed. */
int socket_request(char *message, size_t length, int line);

#endif
