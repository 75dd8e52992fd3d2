#pragma once
// `fusion run` over several processes: torchrun's environment, the rendezvous through c10d's
// TCPStore, the c10d communicator (Gloo; NCCL where LibTorch has it), and `fusion run --nproc N`.
#include <chrono>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "fusion/distributed.hpp"

namespace fusion::host {

/// torchrun's environment: RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT.
struct LaunchEnv {
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;
  int local_world_size = 1;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
};

/// The launch environment of this process, or nullopt when WORLD_SIZE is unset or 1 (one process).
/// Throws fusion::Error naming the variable when one is malformed or out of range (RANK ≥
/// WORLD_SIZE, a missing RANK or MASTER_PORT when WORLD_SIZE > 1, ...).
std::optional<LaunchEnv> read_launch_env();

/// How the ranks talk.
struct ConnectOptions {
  std::string backend = "auto";  ///< "auto" | "gloo" | "nccl"
  bool cuda_device = false;      ///< the run's device is CUDA ("auto" then picks NCCL where built)
  std::chrono::milliseconds timeout{60000};  ///< rendezvous and every collective
};

/// The backend `options` select: "auto" is "nccl" for a CUDA device in a build with NCCL, else
/// "gloo"; any other value as it is (connect refuses an unknown one).
std::string resolved_backend(const ConnectOptions& options);

/// Joins the run described by `env`: rank 0 listens on MASTER_ADDR:MASTER_PORT (TCPStore), every
/// rank checks in with its WORLD_SIZE, rank 0 checks that they agree and that no RANK is taken twice,
/// then the process group is made. Throws fusion::Error "rank R: <cause>" when a peer does not join
/// within the timeout, the rendezvous cannot be reached, the world sizes differ, or the backend is
/// not available.
std::shared_ptr<Communicator> connect(const LaunchEnv& env, const ConnectOptions& options);

/// Whether this LibTorch was built with NCCL (and the host with it).
bool nccl_available();
/// The GPU of a rank whose run.device is "auto" or "cuda": cuda:(LOCAL_RANK mod visible GPUs), as
/// torchrun scripts do, so the local ranks of a machine spread over its GPUs (NCCL refuses two ranks
/// on one GPU). An explicit "cuda:N" is taken as given.
at::Device rank_cuda_device(const LaunchEnv& env);

/// SIGINT and SIGTERM during `fusion run` (one process, or one rank of several). Call once, from the
/// main thread, before the run starts threads: blocks both signals in this thread (and so in every
/// thread started later, which inherit the mask; no system call of the run sees EINTR), installs a
/// handler that passes them through a pipe (for threads started earlier: OpenBLAS's, at load time)
/// and starts one thread that takes them. On either, that
/// thread stops the main thread where it is, removes what unfinished atomic writes left (the
/// temporary files `.NAME.tmp-XXXXXXXX` of write_file_atomic and save_safetensors, the folders
/// `NAME.tmp-XXXXXXXX` of write_directory_atomic, the plot's and the write probe's files of this
/// process) under the run folder set by set_interruption_cleanup, and any such temporary file this
/// process holds open elsewhere (a head cache, a head file), prints one line "fusion: error: [rank R: ]
/// interrupted by SIGTERM ...", appends it to the run's log, and exits with status 128 + the signal
/// (130 for SIGINT, 143 for SIGTERM). Finished files (checkpoints, the log, a report already written)
/// stay, so a PWEMoE run can resume. Only system calls run once a signal came (the stopped thread
/// may hold any lock); a 10 s alarm ends the process if the clean-up itself hangs.
void watch_interruptions();

/// The run folder whose temporary files an interruption removes, and the log file it appends its line
/// to (empty: none). Set by the process that writes the run folder, once it exists.
void set_interruption_cleanup(const std::filesystem::path& run_dir, const std::filesystem::path& log_file);

/// `fusion run --nproc N ...`: starts N copies of this executable (argv without --nproc) with
/// RANK, LOCAL_RANK = 0..N−1, WORLD_SIZE = LOCAL_WORLD_SIZE = N, MASTER_ADDR (kept, else 127.0.0.1)
/// and MASTER_PORT (kept, else a free port of the loopback), and waits for them. When a rank fails
/// (non-zero exit or a signal), the others are stopped (SIGTERM, then SIGKILL after 5 s). Returns
/// the exit status of the first rank that failed, or 0. SIGINT or SIGTERM to the launcher is passed
/// on to every rank, which then stop as watch_interruptions says; the launcher waits for them (SIGKILL
/// after 5 s) and returns 128 + the signal.
int launch_local(int nproc, const std::vector<std::string>& child_args);

}  // namespace fusion::host
