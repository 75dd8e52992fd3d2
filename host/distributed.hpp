#pragma once
// `fusion run` over several processes: torchrun's environment, the rendezvous through c10d's
// TCPStore, the c10d communicator (Gloo; NCCL where LibTorch has it), and `fusion run --nproc N`.
#include <chrono>
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

/// Joins the run described by `env`: rank 0 listens on MASTER_ADDR:MASTER_PORT (TCPStore), every
/// rank checks in with its WORLD_SIZE, rank 0 checks that they agree and that no RANK is taken twice,
/// then the process group is made. Throws fusion::Error "rank R: <cause>" when a peer does not join
/// within the timeout, the rendezvous cannot be reached, the world sizes differ, or the backend is
/// not available.
std::shared_ptr<Communicator> connect(const LaunchEnv& env, const ConnectOptions& options);

/// Whether this LibTorch was built with NCCL (and the host with it).
bool nccl_available();

/// `fusion run --nproc N ...`: starts N copies of this executable (argv without --nproc) with
/// RANK, LOCAL_RANK = 0..N−1, WORLD_SIZE = LOCAL_WORLD_SIZE = N, MASTER_ADDR (kept, else 127.0.0.1)
/// and MASTER_PORT (kept, else a free port of the loopback), and waits for them. When a rank fails
/// (non-zero exit or a signal), the others are stopped (SIGTERM, then SIGKILL after 5 s). Returns
/// the exit status of the first rank that failed, or 0.
int launch_local(int nproc, const std::vector<std::string>& child_args);

}  // namespace fusion::host
