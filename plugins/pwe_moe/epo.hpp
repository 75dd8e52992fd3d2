#pragma once
#include <string>
#include <vector>

namespace fusion::methods {

/// The outcome of one EPO linear program.
struct EpoSolution {
  std::vector<double> alpha;  ///< on the simplex (Σ = 1); r/Σr when the LP failed
  bool ok = false;            ///< false: the LP failed and `alpha` is the fallback r/Σr
  std::string mode;           ///< "balance" or "dominance"
  double mu = 0.0;            ///< the non-uniformity μ of r ⊙ l
  std::string error;          ///< why the LP failed ("" when ok)
};

/// Exact Pareto optimal search's descent weights (Mahapatra & Rajan, ICML 2020, as in the PWEMoE
/// original's phn/solvers.py; docs/pwe_moe.md, "EPO"). `losses` and `r` have T entries, `C` = G Gᵀ is
/// T × T row-major (G: the per-task gradients). With rl = r ⊙ l, l̂ = rl / Σ rl,
/// μ = Σ l̂ᵢ log(T l̂ᵢ) (over l̂ᵢ > float epsilon), a = r ⊙ (log(T l̂) − μ):
///   μ > eps: balance LP   max αᵀCa  s.t. α ≥ 0, Σα = 1, (Cα)ᵢ ≥ rhsᵢ (rows with rhsᵢ = −∞ dropped);
///   else:    dominance LP max 1ᵀCα  s.t. α ≥ 0, Σα = 1, αᵀCa ≥ min(max Ca, 0), Cα ≥ 0.
/// Solved with GLPK's simplex (presolve on, terminal output off) in the same row order as the
/// golden reference (cvxopt.glpk.lp). Never throws: non-finite or negative inputs, a GLPK error or
/// a non-optimal status give ok = false and α = r/Σr (or uniform when Σr is not positive).
/// Thread-compatible (GLPK's environment is thread-local).
EpoSolution epo_weights(const std::vector<double>& losses, const std::vector<double>& r,
                        const std::vector<double>& C, double eps = 1e-4);

}  // namespace fusion::methods
