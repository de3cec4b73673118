// The C++ wrapper against a running assigner (ACB_ASSIGNER). Prints "N passed, M failed".
#include <cstdio>
#include <cstring>

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
  std::printf("%d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}
