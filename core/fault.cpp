#include "core/fault.h"

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <charconv>
#include <chrono>
#include <cstdlib>
#include <mutex>
#include <string>
#include <thread>

#include "core/error.h"

namespace sq::fault {
namespace {

struct Spec {
  bool active = false;
  bool timer = false;
  bool throws = false;  // fail: an sq::Error instead of SIGKILL
  bool warns = false;   // usr1: SIGUSR1 instead of SIGKILL
  std::string point;
  int rank = -1;        // -1: any
  long long count = 1;  // n-th pass; for the timer, milliseconds
};

long long parse_number(std::string_view text, std::string_view what) {
  long long value = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end != text.data() + text.size() || value < 0)
    fail(ErrorContext{.key = "SQ_FAULT"}, "bad {} '{}'", what, text);
  return value;
}

Spec parse(std::string_view text) {
  Spec s;
  if (text.empty()) return s;
  s.active = true;
  if (const auto hash = text.find('#'); hash != std::string_view::npos) {
    s.count = parse_number(text.substr(hash + 1), "pass count");
    text = text.substr(0, hash);
  }
  if (const auto at = text.find('@'); at != std::string_view::npos) {
    s.rank = static_cast<int>(parse_number(text.substr(at + 1), "rank"));
    text = text.substr(0, at);
  }
  constexpr std::string_view kFail = "fail:";
  if (text.starts_with(kFail)) {
    s.throws = true;
    text = text.substr(kFail.size());
  }
  constexpr std::string_view kUsr1 = "usr1:";
  if (text.starts_with(kUsr1)) {
    s.warns = true;
    text = text.substr(kUsr1.size());
  }
  constexpr std::string_view kTimer = "after-ms:";
  if (text.starts_with(kTimer)) {
    s.timer = true;
    s.count = parse_number(text.substr(kTimer.size()), "delay");
  } else {
    s.point = std::string(text);
  }
  return s;
}

const Spec& spec() {
  static const Spec s = [] {
    const char* env = std::getenv("SQ_FAULT");
    return parse(env ? std::string_view(env) : std::string_view());
  }();
  return s;
}

std::atomic<int> g_rank{-1};
std::atomic<long long> g_passes{0};

bool for_this_rank(const Spec& s) { return s.rank < 0 || s.rank == g_rank.load(); }

[[noreturn]] void die() {
  ::kill(::getpid(), SIGKILL);
  std::abort();  // not reached
}

}  // namespace

void set_rank(int rank) { g_rank.store(rank); }

void point(std::string_view name) {
  const Spec& s = spec();
  if (!s.active || s.timer || name != s.point || !for_this_rank(s)) return;
  if (g_passes.fetch_add(1) + 1 != s.count) return;
  if (s.throws) fail("injected failure at {}", name);
  if (s.warns) {
    ::raise(SIGUSR1);
    return;
  }
  die();
}

void arm_timer() {
  const Spec& s = spec();
  if (!s.active || !s.timer || !for_this_rank(s)) return;
  static std::once_flag once;
  std::call_once(once, [ms = s.count] {
    std::thread([ms] {
      std::this_thread::sleep_for(std::chrono::milliseconds(ms));
      die();
    }).detach();
  });
}

}  // namespace sq::fault
