#include "distributed.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <c10/util/Exception.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#if defined(FUSION_HAVE_NCCL)
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <thread>

#include "fusion/error.hpp"

namespace fusion::host {

namespace {

using Clock = std::chrono::steady_clock;

std::string seconds_text(std::chrono::milliseconds t) {
  const double s = static_cast<double>(t.count()) / 1000.0;
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g s", s);
  return buf;
}

// The message of an exception from c10d or Gloo on one line, without LibTorch's backtrace.
std::string cause_of(const std::exception& e) {
  const auto* c10 = dynamic_cast<const c10::Error*>(&e);
  std::string s = c10 ? c10->what_without_backtrace() : e.what();
  for (char& c : s)
    if (c == '\n' || c == '\r') c = ' ';
  while (!s.empty() && s.back() == ' ') s.pop_back();
  return s;
}

std::optional<int> env_int(const char* name, int lo, int hi) {
  const char* v = std::getenv(name);
  if (!v || !*v) return std::nullopt;
  char* end = nullptr;
  errno = 0;
  const long n = std::strtol(v, &end, 10);
  FUSION_ENSURE(*end == '\0' && errno == 0 && n >= lo && n <= hi, name, "=", v, ": expected an integer in [", lo,
                ", ", hi, "]");
  return static_cast<int>(n);
}

std::vector<uint8_t> bytes(const std::string& s) { return {s.begin(), s.end()}; }
std::string text(const std::vector<uint8_t>& b) { return {b.begin(), b.end()}; }

// The c10d process group as the SDK's communicator. Every failure is "rank R: <what> failed: ...".
class C10dCommunicator : public Communicator {
 public:
  C10dCommunicator(c10::intrusive_ptr<c10d::Store> store, c10::intrusive_ptr<c10d::ProcessGroup> pg, int rank,
                   int world, std::string backend, std::chrono::milliseconds timeout)
      : store_(std::move(store)), pg_(std::move(pg)), rank_(rank), world_(world), backend_(std::move(backend)),
        timeout_(timeout) {}
  int rank() const override { return rank_; }
  int world_size() const override { return world_; }

  void all_reduce_sum(at::Tensor& tensor) const override {
    guarded("all_reduce", [&] {
      std::vector<at::Tensor> t{tensor.is_contiguous() ? tensor : tensor.contiguous()};
      pg_->allreduce(t)->wait();
      if (!t[0].is_same(tensor)) tensor.copy_(t[0]);
    });
  }
  std::vector<at::Tensor> all_gather(const at::Tensor& tensor) const override {
    std::vector<at::Tensor> out;
    guarded("all_gather", [&] {
      std::vector<at::Tensor> in{tensor.contiguous()};
      std::vector<std::vector<at::Tensor>> outs(1);
      for (int r = 0; r < world_; ++r) outs[0].push_back(at::empty_like(in[0]));
      pg_->allgather(outs, in)->wait();
      out = std::move(outs[0]);
    });
    return out;
  }
  void broadcast(at::Tensor& tensor, int root) const override {
    FUSION_ENSURE(root >= 0 && root < world_, "rank ", rank_, ": broadcast from rank ", root, " of ", world_);
    guarded("broadcast", [&] {
      std::vector<at::Tensor> t{tensor.is_contiguous() ? tensor : tensor.contiguous()};
      c10d::BroadcastOptions o;
      o.rootRank = root;
      pg_->broadcast(t, o)->wait();
      if (!t[0].is_same(tensor)) tensor.copy_(t[0]);
    });
  }
  void barrier() const override {
    guarded("barrier", [&] { pg_->barrier()->wait(); });
  }

 private:
  template <class F>
  void guarded(const char* what, F&& f) const {
    try {
      f();
    } catch (const std::exception& e) {
      FUSION_FAIL("rank ", rank_, ": ", what, " (", backend_, ") failed: a peer rank exited or did not answer within ",
                  seconds_text(timeout_), " (run.timeout_s): ", cause_of(e));
    }
  }
  c10::intrusive_ptr<c10d::Store> store_;  // rank 0's holds the rendezvous server
  c10::intrusive_ptr<c10d::ProcessGroup> pg_;
  int rank_, world_;
  std::string backend_;
  std::chrono::milliseconds timeout_;
};

// Rank 0: waits until every rank 1..world−1 has checked in with the same WORLD_SIZE, then publishes
// "ok <world>" (or the error) under fusion/ready.
void confirm_ranks(c10d::Store& store, const LaunchEnv& env, std::chrono::milliseconds timeout,
                   const std::string& where) {
  const auto deadline = Clock::now() + timeout;
  std::vector<bool> seen(static_cast<size_t>(env.world_size), false);
  seen[0] = true;
  auto fail = [&](const std::string& msg) {
    try {
      store.set("fusion/ready", bytes("error " + msg));
      // the server lives in this process: give the others a moment to read the verdict
      std::this_thread::sleep_for(std::chrono::milliseconds(500));
    } catch (...) {
    }
    FUSION_FAIL("rank 0: ", msg);
  };
  for (;;) {
    bool all = true;
    for (int r = 1; r < env.world_size; ++r) {
      if (seen[static_cast<size_t>(r)]) continue;
      const std::string key = "fusion/world/" + std::to_string(r);
      if (store.check({key})) {
        const std::string w = text(store.get(key));
        if (w != std::to_string(env.world_size))
          fail("rank " + std::to_string(r) + " has WORLD_SIZE=" + w + ", rank 0 has WORLD_SIZE=" +
               std::to_string(env.world_size) + ": every rank must be started with the same WORLD_SIZE");
        seen[static_cast<size_t>(r)] = true;
      } else {
        all = false;
      }
    }
    if (all) break;
    if (Clock::now() > deadline) {
      std::string missing;
      int n = 0;
      for (int r = 1; r < env.world_size; ++r)
        if (!seen[static_cast<size_t>(r)]) missing += (n++ ? ", " : "") + std::to_string(r);
      fail(std::string(n > 1 ? "ranks " : "rank ") + missing + " of WORLD_SIZE=" + std::to_string(env.world_size) +
           " did not join the rendezvous at " + where + " within " + seconds_text(timeout) +
           " (run.timeout_s): not started, or started with another MASTER_ADDR/MASTER_PORT or WORLD_SIZE");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  store.set("fusion/ready", bytes("ok " + std::to_string(env.world_size)));
}

// Ranks 1..: waits for rank 0's verdict.
void await_confirmation(c10d::Store& store, const LaunchEnv& env, std::chrono::milliseconds timeout,
                        const std::string& where) {
  const std::string me = "rank " + std::to_string(env.rank) + ": ";
  // Rank 0 gives its verdict within its own timeout of the start; allow for a later start of rank 0.
  const auto deadline = Clock::now() + 2 * timeout;
  std::string verdict;
  for (;;) {
    try {
      if (store.check({"fusion/ready"})) {
        verdict = text(store.get("fusion/ready"));
        break;
      }
    } catch (const std::exception& e) {
      FUSION_FAIL(me, "lost the rendezvous at ", where, " (rank 0 exited?): ", cause_of(e));
    }
    FUSION_ENSURE(Clock::now() < deadline, me, "rank 0 did not confirm the rendezvous at ", where, " within ",
                  seconds_text(2 * timeout));
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  if (verdict.rfind("error ", 0) == 0) FUSION_FAIL(me, "the rendezvous failed on rank 0: ", verdict.substr(6));
  const std::string world = verdict.substr(3);
  FUSION_ENSURE(world == std::to_string(env.world_size), me, "WORLD_SIZE=", env.world_size,
                ", rank 0 has WORLD_SIZE=", world, ": every rank must be started with the same WORLD_SIZE");
}

}  // namespace

std::optional<LaunchEnv> read_launch_env() {
  const std::optional<int> world = env_int("WORLD_SIZE", 1, 1 << 20);
  if (!world || *world == 1) return std::nullopt;
  LaunchEnv env;
  env.world_size = *world;
  const std::optional<int> rank = env_int("RANK", 0, *world - 1);
  FUSION_ENSURE(rank.has_value(), "WORLD_SIZE=", *world, " but RANK is unset (set RANK to 0..", *world - 1, ")");
  env.rank = *rank;
  env.local_rank = env_int("LOCAL_RANK", 0, 1 << 20).value_or(env.rank);
  env.local_world_size = env_int("LOCAL_WORLD_SIZE", 1, 1 << 20).value_or(*world);
  if (const char* a = std::getenv("MASTER_ADDR"); a && *a) env.master_addr = a;
  const std::optional<int> port = env_int("MASTER_PORT", 1, 65535);
  FUSION_ENSURE(port.has_value(), "WORLD_SIZE=", *world, " but MASTER_PORT is unset (the rendezvous port of rank 0)");
  env.master_port = *port;
  return env;
}

bool nccl_available() {
#if defined(FUSION_HAVE_NCCL)
  return true;
#else
  return false;
#endif
}

std::shared_ptr<Communicator> connect(const LaunchEnv& env, const ConnectOptions& options) {
  const std::string me = "rank " + std::to_string(env.rank) + ": ";
  const std::string where = env.master_addr + ":" + std::to_string(env.master_port) + " (MASTER_ADDR:MASTER_PORT)";
  std::string backend = options.backend;
  if (backend == "auto") backend = options.cuda_device && nccl_available() ? "nccl" : "gloo";
  FUSION_ENSURE(backend == "gloo" || backend == "nccl", me, "run.backend: expected \"auto\", \"gloo\" or \"nccl\", got \"",
                backend, "\"");
  FUSION_ENSURE(backend != "nccl" || nccl_available(), me,
                "run.backend = \"nccl\", but this fusion was built without NCCL (LibTorch without CUDA): use \"gloo\"");
  FUSION_ENSURE(backend != "nccl" || options.cuda_device, me,
                "run.backend = \"nccl\" needs CUDA tensors: set run.device to \"cuda\" or use \"gloo\"");

  c10d::TCPStoreOptions so;
  so.port = static_cast<uint16_t>(env.master_port);
  so.isServer = env.rank == 0;
  so.waitWorkers = false;
  so.timeout = options.timeout;
  c10::intrusive_ptr<c10d::TCPStore> store;
  try {
    store = c10::make_intrusive<c10d::TCPStore>(env.master_addr, so);
  } catch (const std::exception& e) {
    if (env.rank == 0) FUSION_FAIL(me, "cannot listen for the rendezvous on ", where, ": ", cause_of(e));
    FUSION_FAIL(me, "cannot reach the rendezvous at ", where, " within ", seconds_text(options.timeout),
                " (run.timeout_s): ", cause_of(e));
  }
  try {
    const int64_t claims = store->add("fusion/rank/" + std::to_string(env.rank), 1);
    FUSION_ENSURE(claims == 1, me, "another process was started with RANK=", env.rank);
    if (env.rank == 0) {
      confirm_ranks(*store, env, options.timeout, where);
    } else {
      store->set("fusion/world/" + std::to_string(env.rank), bytes(std::to_string(env.world_size)));
      await_confirmation(*store, env, options.timeout, where);
    }
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    FUSION_FAIL(me, "the rendezvous at ", where, " failed: ", cause_of(e));
  }

  c10::intrusive_ptr<c10d::ProcessGroup> pg;
  try {
    if (backend == "gloo") {
      auto o = c10d::ProcessGroupGloo::Options::create(options.timeout);
      o->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(
          env.master_addr == "localhost" ? "127.0.0.1" : env.master_addr));
      o->threads = 1;
      pg = c10::make_intrusive<c10d::ProcessGroupGloo>(c10::make_intrusive<c10d::PrefixStore>("gloo", store),
                                                       env.rank, env.world_size, o);
    } else {
#if defined(FUSION_HAVE_NCCL)
      auto o = c10d::ProcessGroupNCCL::Options::create();
      o->timeout = options.timeout;
      pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(c10::make_intrusive<c10d::PrefixStore>("nccl", store),
                                                       env.rank, env.world_size, o);
#endif
    }
  } catch (const std::exception& e) {
    FUSION_FAIL(me, "cannot make the ", backend, " process group of ", env.world_size, " ranks: ", cause_of(e));
  }
  return std::make_shared<C10dCommunicator>(store, pg, env.rank, env.world_size, backend, options.timeout);
}

// ---------------------------------------------------------------------------------------------
// fusion run --nproc N

namespace {

// A port of the loopback that is free now (the kernel's choice for port 0).
int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  FUSION_ENSURE(fd >= 0, "--nproc: cannot open a socket to find a free port: ", std::strerror(errno));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  socklen_t len = sizeof a;
  const bool ok = ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 &&
                  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0;
  const int err = errno;
  ::close(fd);
  FUSION_ENSURE(ok, "--nproc: cannot find a free port on 127.0.0.1: ", std::strerror(err));
  return ntohs(a.sin_port);
}

}  // namespace

int launch_local(int nproc, const std::vector<std::string>& child_args) {
  FUSION_ENSURE(nproc >= 1 && nproc <= 1024, "--nproc ", nproc, ": expected 1 to 1024 ranks");
  const char* addr = std::getenv("MASTER_ADDR");
  const std::string master_addr = addr && *addr ? addr : "127.0.0.1";
  const char* port_env = std::getenv("MASTER_PORT");
  const std::string master_port = port_env && *port_env ? port_env : std::to_string(free_port());
  std::vector<std::string> args = child_args;
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  std::fflush(nullptr);
  std::map<pid_t, int> running;  // pid → rank
  for (int r = 0; r < nproc; ++r) {
    const pid_t pid = ::fork();
    if (pid < 0) {
      for (const auto& [p, _] : running) ::kill(p, SIGKILL);
      FUSION_FAIL("--nproc: cannot start rank ", r, ": ", std::strerror(errno));
    }
    if (pid == 0) {
      ::setenv("RANK", std::to_string(r).c_str(), 1);
      ::setenv("LOCAL_RANK", std::to_string(r).c_str(), 1);
      ::setenv("WORLD_SIZE", std::to_string(nproc).c_str(), 1);
      ::setenv("LOCAL_WORLD_SIZE", std::to_string(nproc).c_str(), 1);
      ::setenv("MASTER_ADDR", master_addr.c_str(), 1);
      ::setenv("MASTER_PORT", master_port.c_str(), 1);
      ::execv("/proc/self/exe", argv.data());
      std::fprintf(stderr, "fusion: error: rank %d: cannot start /proc/self/exe: %s\n", r, std::strerror(errno));
      std::_Exit(127);
    }
    running[pid] = r;
  }
  int result = 0;
  std::optional<Clock::time_point> kill_at;
  while (!running.empty()) {
    int status = 0;
    const pid_t pid = ::waitpid(-1, &status, WNOHANG);
    if (pid < 0 && errno != EINTR) break;
    if (pid <= 0) {
      if (kill_at && Clock::now() > *kill_at) {
        for (const auto& [p, _] : running) ::kill(p, SIGKILL);
        kill_at.reset();
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      continue;
    }
    auto it = running.find(pid);
    if (it == running.end()) continue;
    const int rank = it->second;
    running.erase(it);
    const int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
    if (code == 0 || result != 0) continue;
    result = code;
    if (WIFSIGNALED(status))
      std::fprintf(stderr, "fusion: error: rank %d was killed by signal %d (%s); stopping the other ranks\n", rank,
                   WTERMSIG(status), strsignal(WTERMSIG(status)));
    else if (!running.empty())
      std::fprintf(stderr, "fusion: rank %d exited with status %d; stopping the other ranks\n", rank, code);
    for (const auto& [p, _] : running) ::kill(p, SIGTERM);
    kill_at = Clock::now() + std::chrono::seconds(5);
  }
  return result;
}

}  // namespace fusion::host
