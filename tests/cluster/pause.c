/* The node's sandbox ("pause") image: holds a pod's namespaces and does
 * nothing else. Built static by tests/src/cluster/node.rs (musl-gcc or gcc
 * -static) and packed as an OCI image; see tests/cluster/README.md. */
#include <signal.h>
#include <unistd.h>

static void stop(int sig) {
    (void)sig;
    _exit(0);
}

int main(void) {
    signal(SIGTERM, stop);
    signal(SIGINT, stop);
    /* As PID 1 of a pod sharing its PID namespace, let the kernel reap orphans. */
    signal(SIGCHLD, SIG_IGN);
    for (;;) {
        pause();
    }
}
