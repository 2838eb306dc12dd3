/*
 * Sockets inside the container, for trissh's forwarding (ssh -L, -R, -D, -W, unix sockets).
 *
 * A socket made here belongs to the container's network namespace (and a unix socket's
 * path to its mount namespace), so "localhost" is the container's loopback, never the
 * host's. trissh sends one request per socket on the agent's control socket, with one
 * descriptor: a stream socket of the request's own (its "line"):
 *
 *     "connect\0" HOST "\0" PORT "\0"      a TCP connection to HOST:PORT
 *     "connect-unix\0" PATH "\0"           a connection to the unix socket PATH
 *     "listen\0" HOST "\0" PORT "\0"       a listening TCP socket (PORT 0: any free one;
 *                                           HOST "" or "*": every address)
 *     "listen-unix\0" PATH "\0"            a listening unix socket at PATH (mode 0600)
 *     "unlink\0" PATH "\0"                 remove PATH if it is a socket (a listener's end)
 *
 * The answer, on the line: one byte "s" carrying the socket (SCM_RIGHTS), "ok\n" for
 * unlink, or "error: REASON: TEXT\n". Name resolution and connect block, and the agent is
 * one poll loop serving every session, so the agent forks a child per request (this code
 * runs there): the child is in the container's namespaces, with the container's user,
 * answers, and exits; an alarm bounds it (SOCKET_REQUEST_TIMEOUT). Names are resolved by
 * the libc the helper is linked with (musl: /etc/hosts, then /etc/resolv.conf's servers;
 * no NSS modules needed from the image).
 */
#define _GNU_SOURCE
#include "agent-sockets.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define MAX_HOST 255
#define LISTEN_BACKLOG 128

static volatile int answer_line = -1;

static const char *const verbs[] = {"connect", "connect-unix", "listen", "listen-unix",
                                    "unlink"};

int is_socket_request(const char *message, size_t length) {
    if (length == 0 || message[length - 1] != '\0') return 0;
    for (size_t i = 0; i < sizeof verbs / sizeof verbs[0]; i++)
        if (strcmp(message, verbs[i]) == 0) return 1;
    return 0;
}

static int answer_error(const char *reason, const char *text) {
    dprintf(answer_line, "error: %s: %s\n", reason, text);
    return 1;
}

static void on_alarm(int sig) {
    (void)sig;
    static const char text[] = "error: timeout: no answer within the time allowed\n";
    if (write(answer_line, text, sizeof text - 1) < 0) { /* trissh times out itself */ }
    _exit(1);
}

/* The reason trissh maps to an SSH refusal, for a failed connect(), bind() or listen(). */
static const char *errno_reason(int error) {
    switch (error) {
    case ECONNREFUSED:
    case ENOENT: /* no unix socket at that path: nothing listens there */
        return "refused";
    case EHOSTUNREACH:
    case ENETUNREACH:
    case ENETDOWN:
    case EHOSTDOWN:
        return "unreachable";
    case ETIMEDOUT:
        return "timeout";
    default:
        return "failed";
    }
}

int send_fd(int sock, char byte, int fd) {
    struct iovec part = {.iov_base = &byte, .iov_len = 1};
    union {
        struct cmsghdr header;
        char space[CMSG_SPACE(sizeof(int))];
    } control;
    memset(&control, 0, sizeof control);
    struct msghdr message = {.msg_iov = &part, .msg_iovlen = 1,
                             .msg_control = control.space, .msg_controllen = sizeof control.space};
    struct cmsghdr *header = CMSG_FIRSTHDR(&message);
    header->cmsg_level = SOL_SOCKET;
    header->cmsg_type = SCM_RIGHTS;
    header->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(header), &fd, sizeof(int));
    return sendmsg(sock, &message, MSG_NOSIGNAL) == 1 ? 0 : -1;
}

static int answer_socket(int sock) {
    return send_fd(answer_line, 's', sock) == 0 ? 0 : 1;
}

/* HOST, PORT -> addresses; NULL after answering the error. */
static struct addrinfo *resolve(const char *host, const char *port, int passive) {
    struct addrinfo hints, *found = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV | (passive ? AI_PASSIVE : 0);
    int rc = getaddrinfo(host, port, &hints, &found);
    if (rc != 0 && strcasecmp(host, "localhost") == 0) { /* an image without it in /etc/hosts */
        hints.ai_flags = AI_NUMERICSERV; /* no node, not passive: the loopback addresses */
        rc = getaddrinfo(NULL, port, &hints, &found);
    }
    if (rc == 0) return found;
    switch (rc) {
    case EAI_NONAME:
    case EAI_AGAIN:
    case EAI_FAIL:
#ifdef EAI_NODATA
    case EAI_NODATA:
#endif
#ifdef EAI_ADDRFAMILY
    case EAI_ADDRFAMILY:
#endif
        dprintf(answer_line, "error: unknown_host: cannot resolve %s: %s\n", host,
                gai_strerror(rc));
        break;
    case EAI_SYSTEM:
        answer_error("failed", strerror(errno));
        break;
    default:
        answer_error("failed", gai_strerror(rc));
    }
    return NULL;
}

/* The first of `found` that connects (or binds and listens), as ssh tries each address;
 * -1 with *error set to the last one's errno if none does. */
static int first_socket(const struct addrinfo *found, int listening, int *error) {
    for (const struct addrinfo *at = found; at != NULL; at = at->ai_next) {
        int sock = socket(at->ai_family, at->ai_socktype | SOCK_CLOEXEC, at->ai_protocol);
        if (sock < 0) {
            *error = errno;
            continue;
        }
        int on = 1, off = 0;
        if (listening && at->ai_family == AF_INET6) /* "::" takes IPv4 too */
            setsockopt(sock, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof off);
        int ok = listening
            ? setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on) == 0 &&
                  bind(sock, at->ai_addr, at->ai_addrlen) == 0 && listen(sock, LISTEN_BACKLOG) == 0
            : connect(sock, at->ai_addr, at->ai_addrlen) == 0;
        if (ok) return sock;
        *error = errno;
        close(sock);
    }
    return -1;
}

/* Every address: "::" (which takes IPv4 too), or 0.0.0.0 where there is no IPv6. */
static int wildcard_socket(const char *port, int *error) {
    unsigned short number = htons((unsigned short)atoi(port));
    struct sockaddr_in6 any6 = {.sin6_family = AF_INET6, .sin6_port = number,
                                .sin6_addr = IN6ADDR_ANY_INIT};
    struct sockaddr_in any4 = {.sin_family = AF_INET, .sin_port = number,
                               .sin_addr.s_addr = htonl(INADDR_ANY)};
    struct addrinfo v4 = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM,
                          .ai_addr = (struct sockaddr *)&any4, .ai_addrlen = sizeof any4};
    struct addrinfo v6 = {.ai_family = AF_INET6, .ai_socktype = SOCK_STREAM,
                          .ai_addr = (struct sockaddr *)&any6, .ai_addrlen = sizeof any6,
                          .ai_next = &v4};
    return first_socket(&v6, 1, error);
}

static int tcp_socket(const char *host, const char *port, int listening) {
    int error = EADDRNOTAVAIL, sock;
    if (listening && (host[0] == '\0' || strcmp(host, "*") == 0)) {
        sock = wildcard_socket(port, &error);
    } else {
        struct addrinfo *found = resolve(host, port, listening);
        if (found == NULL) return 1;
        sock = first_socket(found, listening, &error);
        freeaddrinfo(found);
    }
    if (sock >= 0) return answer_socket(sock);
    return answer_error(errno_reason(error), strerror(error));
}

static int unix_socket(const char *path, int listening) {
    struct sockaddr_un addr;
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    if (path[0] == '\0' || strlen(path) >= sizeof addr.sun_path)
        return answer_error("failed", "the socket path is empty or too long");
    memcpy(addr.sun_path, path, strlen(path));
    int sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (sock < 0) return answer_error("failed", strerror(errno));
    int ok;
    if (listening) {
        umask(0177); /* as sshd's StreamLocalBindMask: only the container's user */
        ok = bind(sock, (struct sockaddr *)&addr, sizeof addr) == 0 &&
             listen(sock, LISTEN_BACKLOG) == 0;
    } else {
        ok = connect(sock, (struct sockaddr *)&addr, sizeof addr) == 0;
    }
    if (ok) return answer_socket(sock);
    int error = errno;
    close(sock);
    return answer_error(errno_reason(error), strerror(error));
}

/* Remove a listener's socket file; anything else at PATH (the user replaced it) stays. */
static int unlink_socket(const char *path) {
    struct stat info;
    if (lstat(path, &info) < 0) {
        if (errno == ENOENT) return dprintf(answer_line, "ok\n") > 0 ? 0 : 1;
        return answer_error("failed", strerror(errno));
    }
    if (!S_ISSOCK(info.st_mode)) return answer_error("failed", "not a socket");
    if (unlink(path) < 0 && errno != ENOENT) return answer_error("failed", strerror(errno));
    return dprintf(answer_line, "ok\n") > 0 ? 0 : 1;
}

/* A decimal port 0..65535, else NULL after answering the error. */
static const char *checked_port(const char *port) {
    char *end;
    errno = 0;
    long value = strtol(port, &end, 10);
    if (port[0] < '0' || port[0] > '9' || *end != '\0' || errno != 0 || value > 65535) {
        answer_error("failed", "not a port number");
        return NULL;
    }
    return port;
}

int socket_request(char *message, size_t length, int line) {
    answer_line = line;
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = on_alarm;
    sigaction(SIGALRM, &action, NULL);
    alarm(SOCKET_REQUEST_TIMEOUT);
    char *words[4] = {NULL, NULL, NULL, NULL};
    size_t count = 0;
    for (char *word = message; word < message + length; word += strlen(word) + 1) {
        if (count == 4) return answer_error("failed", "malformed request");
        words[count++] = word;
    }
    const char *verb = words[0];
    int tcp = strcmp(verb, "connect") == 0 || strcmp(verb, "listen") == 0;
    if (count != (tcp ? 3u : 2u)) return answer_error("failed", "malformed request");
    if (tcp) {
        if (strlen(words[1]) > MAX_HOST) return answer_error("unknown_host", "name too long");
        if (checked_port(words[2]) == NULL) return 1;
        return tcp_socket(words[1], words[2], verb[0] == 'l');
    }
    if (strcmp(verb, "unlink") == 0) return unlink_socket(words[1]);
    return unix_socket(words[1], verb[0] == 'l');
}
