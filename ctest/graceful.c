/* enableGracefulShutdown: a child process registers its engine and raises
 * SIGTERM; it must exit with status 128 + SIGTERM (143) after destroying the
 * engine, not be killed by the signal. A second child checks SIGINT (130). */
#include <signal.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <transfer_engine_c.h>

#include "check.h"

static int run_child(int signo) {
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        transfer_engine_t e = createTransferEngine("P2PHANDSHAKE", "127.0.0.1", "127.0.0.1", 0, 0);
        if (!e) _exit(2);
        enableGracefulShutdown(e);
        enableGracefulShutdown(e); /* idempotent */
        raise(signo);
        sleep(20); /* the watcher thread must _exit long before this */
        _exit(3);
    }
    {
        int status = 0, waited = 0;
        /* Bounded wait: 30 s. */
        while (waitpid(pid, &status, WNOHANG) == 0) {
            struct timespec ts = {0, 50 * 1000 * 1000};
            if (++waited > 600) {
                kill(pid, SIGKILL);
                waitpid(pid, &status, 0);
                fprintf(stderr, "child for signal %d did not exit\n", signo);
                return -1;
            }
            nanosleep(&ts, NULL);
        }
        if (WIFSIGNALED(status)) {
            fprintf(stderr, "child killed by signal %d\n", WTERMSIG(status));
            return -1;
        }
        return WEXITSTATUS(status);
    }
}

int main(void) {
    CHECK_EQ(run_child(SIGTERM), 128 + SIGTERM);
    CHECK_EQ(run_child(SIGINT), 128 + SIGINT);
    /* Bad handles are ignored without installing anything or crashing. */
    enableGracefulShutdown(NULL);
    enableGracefulShutdown((transfer_engine_t)(uintptr_t)0x1234);
    return te_finish("graceful");
}
