/* Subcommand entry points of the `tandem` binary. Each returns a process exit code
 * (0 ok, 1 runtime failure, 2 bad usage or input) and prints its own --help. */
#ifndef TD_CLI_H
#define TD_CLI_H

int td_cmd_train(int argc, char **argv);
int td_cmd_generate(int argc, char **argv);
int td_cmd_prep(int argc, char **argv);

/* Prints "tandem CMD: <message>" for the recorded error and returns its exit code. */
int td_cli_fail(const char *cmd, int status);

#endif
