#include "epo.hpp"

#include <glpk.h>

#include <algorithm>
#include <cmath>
#include <csetjmp>
#include <limits>
#include <numeric>

namespace fusion::methods {

namespace {

struct GlpkJump {
  std::jmp_buf env;
};

// GLPK aborts the process after calling the error hook unless the hook does not return; the
// documented way out is a longjmp followed by glp_free_env().
extern "C" void glpk_error_hook(void* info) { std::longjmp(static_cast<GlpkJump*>(info)->env, 1); }

std::vector<double> fallback_alpha(const std::vector<double>& r) {
  double s = 0.0;
  bool finite = true;
  for (double v : r) {
    if (!std::isfinite(v) || v < 0) finite = false;
    s += v;
  }
  std::vector<double> a(r.size(), r.empty() ? 0.0 : 1.0 / static_cast<double>(r.size()));
  if (finite && s > 0)
    for (size_t i = 0; i < r.size(); ++i) a[i] = r[i] / s;
  return a;
}

// One LP in cvxopt.glpk.lp's form: minimise cᵀx s.t. G x ≤ h (rows in order), 1ᵀx = 1, x free.
// Returns false (with `error`) on any failure. Plain data only between setjmp and longjmp.
bool solve_lp(int n, const std::vector<double>& c, const std::vector<std::vector<double>>& G,
              const std::vector<double>& h, std::vector<double>& x, std::string& error) {
  const int m = static_cast<int>(G.size());
  std::vector<int> ia(1, 0), ja(1, 0);
  std::vector<double> ar(1, 0.0);
  // Column-major like cvxopt's dense matrix traversal; zeros skipped as it does.
  for (int j = 0; j < n; ++j) {
    for (int i = 0; i < m; ++i) {
      const double v = G[static_cast<size_t>(i)][static_cast<size_t>(j)];
      if (v != 0.0) {
        ia.push_back(i + 1);
        ja.push_back(j + 1);
        ar.push_back(v);
      }
    }
  }
  for (int j = 0; j < n; ++j) {
    ia.push_back(m + 1);
    ja.push_back(j + 1);
    ar.push_back(1.0);
  }
  GlpkJump jump;
  glp_prob* volatile lp = nullptr;
  if (setjmp(jump.env) != 0) {
    glp_error_hook(nullptr, nullptr);
    glp_free_env();  // reclaims everything GLPK allocated, `lp` included
    error = "GLPK internal error";
    return false;
  }
  glp_error_hook(glpk_error_hook, &jump);
  glp_term_out(GLP_OFF);
  lp = glp_create_prob();
  glp_set_obj_dir(lp, GLP_MIN);
  glp_add_rows(lp, m + 1);
  glp_add_cols(lp, n);
  for (int j = 0; j < n; ++j) {
    glp_set_obj_coef(lp, j + 1, c[static_cast<size_t>(j)]);
    glp_set_col_bnds(lp, j + 1, GLP_FR, 0.0, 0.0);
  }
  for (int i = 0; i < m; ++i) glp_set_row_bnds(lp, i + 1, GLP_UP, 0.0, h[static_cast<size_t>(i)]);
  glp_set_row_bnds(lp, m + 1, GLP_FX, 1.0, 1.0);
  glp_load_matrix(lp, static_cast<int>(ar.size()) - 1, ia.data(), ja.data(), ar.data());
  glp_smcp parm;
  glp_init_smcp(&parm);
  parm.msg_lev = GLP_MSG_OFF;
  parm.presolve = GLP_ON;
  const int rc = glp_simplex(lp, &parm);
  const int status = rc == 0 ? glp_get_status(lp) : 0;
  bool ok = rc == 0 && status == GLP_OPT;
  if (ok) {
    x.assign(static_cast<size_t>(n), 0.0);
    for (int j = 0; j < n; ++j) x[static_cast<size_t>(j)] = glp_get_col_prim(lp, j + 1);
  } else {
    error = rc != 0 ? "glp_simplex returned " + std::to_string(rc)
                    : "LP status " + std::to_string(status) + " (not optimal)";
  }
  glp_delete_prob(lp);
  glp_error_hook(nullptr, nullptr);
  return ok;
}

}  // namespace

EpoSolution epo_weights(const std::vector<double>& losses, const std::vector<double>& r,
                        const std::vector<double>& C, double eps) {
  EpoSolution out;
  const size_t T = losses.size();
  auto fail = [&](std::string why) {
    out.ok = false;
    out.error = std::move(why);
    out.alpha = fallback_alpha(r);
    return out;
  };
  if (T == 0 || r.size() != T || C.size() != T * T) return fail("inconsistent sizes");
  for (size_t i = 0; i < T; ++i)
    if (!std::isfinite(losses[i]) || !std::isfinite(r[i])) return fail("non-finite loss or preference");
  for (double v : C)
    if (!std::isfinite(v)) return fail("non-finite gradient inner product");

  // Step 1 (docs/pwe_moe.md, "EPO"): rl, l̂, μ, a, Ca.
  std::vector<double> rl(T);
  double sum_rl = 0.0;
  for (size_t i = 0; i < T; ++i) {
    rl[i] = r[i] * losses[i];
    if (rl[i] < 0) return fail("r ⊙ l has a negative entry");
    sum_rl += rl[i];
  }
  if (!(sum_rl > 0)) return fail("r ⊙ l sums to zero");
  const double n = static_cast<double>(T);
  const double feps = static_cast<double>(std::numeric_limits<float>::epsilon());
  std::vector<double> lhat(T);
  double mu = 0.0;
  for (size_t i = 0; i < T; ++i) {
    lhat[i] = rl[i] / sum_rl;
    if (lhat[i] > feps) mu += lhat[i] * std::log(lhat[i] * n);
  }
  out.mu = mu;
  std::vector<double> a(T), Ca(T, 0.0);
  for (size_t i = 0; i < T; ++i) a[i] = r[i] * (std::log(lhat[i] * n) - mu);
  for (size_t i = 0; i < T; ++i)
    for (size_t j = 0; j < T; ++j) Ca[i] += C[i * T + j] * a[j];
  for (double v : Ca)
    if (!std::isfinite(v)) return fail("non-finite adjustment C·a (a zero weighted loss)");

  std::vector<std::vector<double>> G;
  std::vector<double> h, c(T);
  for (size_t i = 0; i < T; ++i) {  // −α ≤ 0
    std::vector<double> row(T, 0.0);
    row[i] = -1.0;
    G.push_back(std::move(row));
    h.push_back(0.0);
  }
  if (mu > eps) {
    // Step 2: balance. rhs = Ca with rhs[J] = −∞ for J = {Caᵢ > 0}, rhs[J*] = 0 for
    // J* = argmax rl; rhs = 0 when J is empty. Rows with −∞ are no constraint and are dropped.
    out.mode = "balance";
    const double max_rl = *std::max_element(rl.begin(), rl.end());
    bool any_j = false;
    for (double v : Ca) any_j = any_j || v > 0;
    for (size_t i = 0; i < T; ++i) {
      double rhs = 0.0;
      bool keep = true;
      if (any_j) {
        rhs = Ca[i];
        if (Ca[i] > 0) keep = false;
        if (rl[i] == max_rl) {
          rhs = 0.0;
          keep = true;
        }
      }
      if (!keep) continue;
      std::vector<double> row(T);
      for (size_t j = 0; j < T; ++j) row[j] = -C[i * T + j];
      G.push_back(std::move(row));
      h.push_back(-rhs);
    }
    for (size_t j = 0; j < T; ++j) c[j] = -Ca[j];
  } else {
    // Step 3: dominance.
    out.mode = "dominance";
    std::vector<double> row(T);
    for (size_t j = 0; j < T; ++j) row[j] = -Ca[j];
    G.push_back(std::move(row));
    h.push_back(-std::min(*std::max_element(Ca.begin(), Ca.end()), 0.0));
    for (size_t i = 0; i < T; ++i) {
      std::vector<double> crow(T);
      for (size_t j = 0; j < T; ++j) crow[j] = -C[i * T + j];
      G.push_back(std::move(crow));
      h.push_back(0.0);
    }
    for (size_t j = 0; j < T; ++j) {
      double col = 0.0;
      for (size_t i = 0; i < T; ++i) col += C[i * T + j];
      c[j] = -col;
    }
  }
  std::vector<double> x;
  std::string error;
  if (!solve_lp(static_cast<int>(T), c, G, h, x, error)) return fail(error);
  for (double v : x)
    if (!std::isfinite(v)) return fail("non-finite LP solution");
  out.ok = true;
  out.alpha = std::move(x);
  return out;
}

}  // namespace fusion::methods
