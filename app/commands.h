// The subcommands of the `epserve` binary. Each takes the arguments after
// its name (argv[0] is the subcommand) and returns the process exit code
// (0 ok, 1 runtime failure, 2 usage error). Each runs alone or under mpirun.
#ifndef EP_COMMANDS_H
#define EP_COMMANDS_H

int ep_cmd_make_model(int argc, char **argv);    // app/make_model.c
int ep_cmd_bench(int argc, char **argv);         // app/bench.c
int ep_cmd_bench_comm(int argc, char **argv);    // app/bench_comm.c (`bench comm`)
int ep_cmd_bench_kernels(int argc, char **argv); // app/bench_kernels.c (`bench kernels`)
int ep_cmd_bench_sched(int argc, char **argv);   // app/bench_sched.c (`bench sched`, sim/)
int ep_cmd_route(int argc, char **argv);         // app/route.c
int ep_cmd_simulate(int argc, char **argv);      // app/simulate.c (sim/)
int ep_cmd_plan(int argc, char **argv);          // app/plan.c (sim/)
int ep_cmd_calibrate(int argc, char **argv);     // app/calibrate.c
int ep_cmd_tokenize(int argc, char **argv);      // app/tokenize.c (model/tokenizer.h)
int ep_cmd_chat_template(int argc, char **argv); // app/chat_template.c (model/chat.h)
int ep_cmd_generate(int argc, char **argv);      // app/generate.c (scheduler/engine.h)
int ep_cmd_logits(int argc, char **argv);        // app/logits.c (one sequence's logits, for checks)
int ep_cmd_serve(int argc, char **argv);         // app/serve.c (server/)
int ep_cmd_bench_serve(int argc, char **argv);   // app/bench_serve.c (`bench serve`)
int ep_cmd_bench_kl(int argc, char **argv);      // app/bench_kl.c (`bench kl`)
int ep_cmd_bench_model(int argc, char **argv);   // app/bench_model.c (`bench model`)
int ep_cmd_detect_eval(int argc, char **argv);   // app/detect_eval.c (router/detect.h)

#endif
