// The C++ wrapper against a running assigner (ACB_ASSIGNER). Prints "N passed, M failed".
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <utility>

#include "acb.hpp"

#include "check.h"

int main() {
  acb::Client client("", "cpp-test");
  uint64_t first = 0;
  {
    acb::DevicePhase phase(client);
    first = phase.lease().id();
    CHECK(first > 0);
    CHECK(phase.lease().device_count() == 1);
    CHECK(phase.lease().device_uuid(0).rfind("fake-", 0) == 0);
    bool threw = false;
    try {
      phase.lease().device_index(5);
    } catch (const acb::Error& e) {
      threw = e.status() == ACB_STATUS_OUT_OF_RANGE;
    }
    CHECK(threw);
    bool twice = false;
    try {
      client.begin();
    } catch (const acb::Error& e) {
      twice = e.status() == ACB_STATUS_ALREADY_ACTIVE && std::strlen(e.what()) > 0;
    }
    CHECK(twice);
  }
  // The scope ended the phase: ending again is an error, beginning again works.
  bool not_active = false;
  try {
    client.end();
  } catch (const acb::Error& e) {
    not_active = e.status() == ACB_STATUS_NOT_ACTIVE;
  }
  CHECK(not_active);
  {
    acb::Request r;
    r.gpus(1).priority(3).timeout_ms(5000);
    acb::DevicePhase phase(client, r);
    CHECK(phase.lease().id() == first);  // lazy release kept the lease
  }
  bool bad = false;
  try {
    acb::Request r;
    r.gpus(0);
  } catch (const acb::Error& e) {
    bad = e.status() == ACB_STATUS_INVALID_ARGUMENT;
  }
  CHECK(bad);

  // Plain functions: the ABI version and a status's description.
  CHECK(acb::abi_version() == ACB_ABI_VERSION);
  CHECK(acb::status_message(ACB_STATUS_TIMEOUT).size() > 0);
  CHECK(acb::status_message(static_cast<acb_status>(999)) == "unknown status");

  // The assigner's status as JSON, while this client holds the GPU: it names the job.
  {
    acb::DevicePhase phase(client);
    std::string json = client.status_json();
    CHECK(json.rfind("{", 0) == 0 && json.back() == '}');
    CHECK(json.find("\"cpp-test\"") != std::string::npos);
  }

  // Every config setter, chained; a bad value throws INVALID_ARGUMENT and names the limit.
  acb::Config cfg;
  cfg.job("cpp-eager").connect_timeout_ms(1000).connect_retries(1).assigner_uid(UINT32_MAX);
  cfg.pin_gpus(false).eager_release(true).memory_backend("host").idle_timeout_ms(0);
  cfg.group("cpp-group", 2).group("", 0);  // named, then none: this client's phases are its own
  CHECK(cfg.get() != nullptr);
  auto invalid = [](auto set) {
    try {
      acb::Config c;
      set(c);
    } catch (const acb::Error& e) {
      return e.status() == ACB_STATUS_INVALID_ARGUMENT && std::strlen(e.what()) > 0;
    }
    return false;
  };
  CHECK(invalid([](acb::Config& c) { c.job(std::string(300, 'x')); }));
  CHECK(invalid([](acb::Config& c) { c.memory_backend("gpu"); }));
  CHECK(invalid([](acb::Config& c) { c.assigner("nowhere"); }));
  CHECK(invalid([](acb::Config& c) { c.connect_timeout_ms(0); }));
  CHECK(invalid([](acb::Config& c) { c.group("g", 0); }));
  CHECK(invalid([](acb::Config& c) { c.group("g", 4097); }));
  CHECK(invalid([](acb::Config& c) { c.group(std::string(300, 'g'), 2); }));
  {
    acb::Config tokened;
    tokened.auth_token("secret").assigner("unix:/nonexistent/acb.sock");
    acb::Client unused(tokened);  // connects at its first phase only
    CHECK(unused.get() != nullptr);
  }
  acb::Client eager(cfg);

  // Swappable memory, owned by acb::DeviceMemory: eager release swaps it out at each phase
  // end, and it comes back at the same address with the same bytes.
  bool outside = false;
  try {
    eager.alloc(4096);
  } catch (const acb::Error& e) {
    outside = e.status() == ACB_STATUS_NOT_ACTIVE;
  }
  CHECK(outside);
  const size_t size = 4u << 20;
  acb::DeviceMemory state = [&] {
    acb::DevicePhase phase(eager);
    acb::DeviceMemory m(eager, size);
    std::memset(m.get(), 0x5a, size);
    acb::DeviceMemory weights(eager, 2u << 20);
    weights.set_read_only();
    CHECK(eager.memory_stats().allocations == 2);
    return m;  // moved out; weights is freed here, in the phase
  }();
  void* const address = state.get();
  CHECK(state.size() == size);
  // The swap-out runs on libacb's thread right after the end: wait for it (10 s at most).
  acb_memory_stats out = eager.memory_stats();
  for (int i = 0; i < 1000 && out.resident_bytes > 0; i++) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    out = eager.memory_stats();
  }
  CHECK(out.allocations == 1 && out.resident_bytes == 0 && out.swapped_bytes >= size);
  CHECK(out.swapped_out_total >= size);
  {
    acb::DevicePhase phase(eager);
    CHECK(state.get() == address);
    const unsigned char* bytes = static_cast<const unsigned char*>(state.get());
    CHECK(bytes[0] == 0x5a && bytes[size - 1] == 0x5a);
    CHECK(eager.memory_stats().resident_bytes >= size);
    // The raw handles, for C calls.
    acb_memory_stats raw{};
    CHECK(acb_client_memory_stats(eager.get(), &raw) == ACB_STATUS_OK && raw.allocations == 1);
    CHECK(acb_lease_id(phase.lease().get()) == phase.lease().id());

    // Client::alloc/dealloc without an owner; a pointer libacb did not hand out is refused.
    void* p = eager.alloc(1000);
    eager.set_read_only(p, true);
    eager.set_read_only(p, false);
    eager.dealloc(p);
    eager.dealloc(nullptr);
    bool refused = false;
    int local = 0;
    try {
      eager.dealloc(&local);
    } catch (const acb::Error& e) {
      refused = e.status() == ACB_STATUS_INVALID_ARGUMENT;
    }
    CHECK(refused);

    // The process-wide allocator (what PyTorch's pluggable allocator and cudaMalloc use).
    CHECK(!acb::allocator::has_client());
    eager.set_as_allocator();
    CHECK(acb::allocator::has_client());
    void* q = acb_allocator_malloc(1 << 16, 0, nullptr);
    CHECK(q != nullptr);
    CHECK(acb::allocator::try_free(q));
    CHECK(!acb::allocator::try_free(&local));
    acb::allocator::unset_client();
    CHECK(!acb::allocator::has_client());
  }
  {
    acb::DeviceMemory gone = std::move(state);
    CHECK(state.get() == nullptr && gone.get() == address);
  }  // freed while swapped out
  CHECK(eager.memory_stats().allocations == 0 && eager.memory_stats().swapped_bytes == 0);

  std::printf("%d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}
