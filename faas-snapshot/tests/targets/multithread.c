/*
 * multithread.c: negative target for faas-snapshot's tests.
 *
 * Build: gcc -O1 -pthread -o multithread multithread.c
 *
 * Starts two extra threads that block forever, waits until both run, closes
 * every fd above 2 and stops itself with raise(SIGSTOP) while it has three
 * threads. A checkpoint must refuse it and name the three threads. When
 * continued it prints `OK multithread` and exits 0.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <unistd.h>

static pthread_barrier_t started;

static void *block_forever(void *arg)
{
	(void)arg;
	pthread_barrier_wait(&started);
	for (;;)
		pause();
	return NULL;
}

int main(void)
{
	pthread_t t[2];

	if (pthread_barrier_init(&started, NULL, 3) != 0) {
		printf("FAIL setup: pthread_barrier_init\n");
		return 1;
	}
	for (int i = 0; i < 2; i++)
		if (pthread_create(&t[i], NULL, block_forever, NULL) != 0) {
			printf("FAIL setup: pthread_create\n");
			return 1;
		}
	pthread_barrier_wait(&started);
	if (close_range(3, ~0U, 0) != 0) {
		printf("FAIL setup: close_range\n");
		return 1;
	}

	raise(SIGSTOP);

	printf("OK multithread\n");
	fflush(stdout);
	return 0;
}
