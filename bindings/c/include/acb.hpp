// acb.hpp: a header-only C++17 wrapper over libacb's C API (acb.h).
//
//   acb::Client client;                       // from ACB_ASSIGNER / ACB_JOB_ID
//   {
//     acb::DevicePhase phase(client);         // blocks until a GPU is granted
//     run_kernels(phase.lease().device_index(0));
//   }                                         // the GPU phase ends here
//
// Failures throw acb::Error, which carries the acb_status and libacb's message.
#ifndef ACB_HPP
#define ACB_HPP

#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "acb.h"

namespace acb {

class Error : public std::runtime_error {
 public:
  Error(acb_status status, const std::string& message) : std::runtime_error(message), status_(status) {}
  acb_status status() const noexcept { return status_; }

 private:
  acb_status status_;
};

// Throws acb::Error unless status is ACB_STATUS_OK.
inline void check(acb_status status) {
  if (status == ACB_STATUS_OK) return;
  char buf[512];
  size_t n = 0;
  if (acb_error_message(buf, sizeof buf, &n) != ACB_STATUS_OK || n == 0) {
    acb_status_message(status, buf, sizeof buf, &n);
  }
  throw Error(status, std::string(buf, n));
}

// What a GPU phase asks for.
class Request {
 public:
  Request() { check(acb_request_new(&p_)); }
  ~Request() { acb_request_free(p_); }
  Request(const Request&) = delete;
  Request& operator=(const Request&) = delete;
  Request& gpus(uint32_t n) { check(acb_request_set_gpus(p_, n)); return *this; }
  Request& memory_per_gpu(uint64_t bytes) { check(acb_request_set_memory_per_gpu(p_, bytes)); return *this; }
  Request& priority(int32_t p) { check(acb_request_set_priority(p_, p)); return *this; }
  Request& timeout_ms(uint32_t ms) { check(acb_request_set_timeout_ms(p_, ms)); return *this; }
  const acb_request* get() const noexcept { return p_; }

 private:
  acb_request* p_ = nullptr;
};

// The GPUs of a granted phase.
class Lease {
 public:
  explicit Lease(acb_lease* p) noexcept : p_(p) {}
  ~Lease() { acb_lease_free(p_); }
  Lease(Lease&& o) noexcept : p_(std::exchange(o.p_, nullptr)) {}
  Lease& operator=(Lease&& o) noexcept { std::swap(p_, o.p_); return *this; }
  Lease(const Lease&) = delete;
  Lease& operator=(const Lease&) = delete;
  uint64_t id() const noexcept { return acb_lease_id(p_); }
  size_t device_count() const noexcept { return acb_lease_device_count(p_); }
  uint64_t memory_per_gpu() const noexcept { return acb_lease_memory_per_gpu(p_); }
  uint32_t device_index(size_t i) const {
    uint32_t index = 0;
    check(acb_lease_device_index(p_, i, &index));
    return index;
  }
  std::string device_uuid(size_t i) const {
    char buf[128];
    size_t n = 0;
    check(acb_lease_device_uuid(p_, i, buf, sizeof buf, &n));
    return std::string(buf, n);
  }

 private:
  acb_lease* p_ = nullptr;
};

// A client of the assigner; owns its libacb handle.
class Client {
 public:
  // From the environment (ACB_ASSIGNER, ACB_JOB_ID).
  Client() : Client(std::string(), std::string()) {}
  // An explicit assigner address and job name; empty strings keep the environment's.
  Client(const std::string& assigner, const std::string& job) {
    acb_config* cfg = nullptr;
    check(acb_config_new(&cfg));
    try {
      if (!assigner.empty()) check(acb_config_set_assigner(cfg, assigner.data(), assigner.size()));
      if (!job.empty()) check(acb_config_set_job(cfg, job.data(), job.size()));
      check(acb_client_new(cfg, &p_));
    } catch (...) {
      acb_config_free(cfg);
      throw;
    }
    acb_config_free(cfg);
  }
  ~Client() { acb_client_free(p_); }
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  Lease begin(const Request& request) {
    acb_lease* lease = nullptr;
    check(acb_on_device_begin(p_, request.get(), &lease));
    return Lease(lease);
  }
  Lease begin() { return begin(Request()); }
  void end() { check(acb_on_device_end(p_)); }

 private:
  acb_client* p_ = nullptr;
};

// A GPU phase as a scope: begins in the constructor, ends in the destructor.
class DevicePhase {
 public:
  explicit DevicePhase(Client& client) : client_(client), lease_(client.begin()) {}
  DevicePhase(Client& client, const Request& request) : client_(client), lease_(client.begin(request)) {}
  ~DevicePhase() {
    // A destructor must not throw; the only failure here is "no phase active", which the
    // constructor rules out.
    acb_on_device_end_nothrow();
  }
  DevicePhase(const DevicePhase&) = delete;
  DevicePhase& operator=(const DevicePhase&) = delete;
  const Lease& lease() const noexcept { return lease_; }

 private:
  void acb_on_device_end_nothrow() noexcept {
    try {
      client_.end();
    } catch (...) {
    }
  }
  Client& client_;
  Lease lease_;
};

}  // namespace acb

#endif  // ACB_HPP
