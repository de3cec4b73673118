// acb.hpp: a header-only C++17 wrapper over libacb's C API (acb.h).
//
//   acb::Client client;                       // from ACB_ASSIGNER / ACB_JOB_ID
//   {
//     acb::DevicePhase phase(client);         // blocks until a GPU is granted
//     run_kernels(phase.lease().device_index(0));
//   }                                         // the GPU phase ends here
//
//   acb::Client eager(acb::Config().job("fold-1").eager_release(true));   // every setter of acb_config
//   acb::DevicePhase phase(eager);
//   acb::DeviceMemory state(eager, 32 << 20);  // swappable: keeps its address across swaps
//
// Failures throw acb::Error, which carries the acb_status and libacb's message. Every class
// gives its libacb handle with get(), for the C calls this header does not wrap.
#ifndef ACB_HPP
#define ACB_HPP

#include <cstddef>
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

// The fixed description of a status ("unknown status" for a number libacb does not know).
inline std::string status_message(acb_status status) {
  char buf[256];
  size_t n = 0;
  acb_status_message(status, buf, sizeof buf, &n);
  return std::string(buf, n);
}

// Throws acb::Error unless status is ACB_STATUS_OK. The message is the details of this
// thread's last failure (cut at 1023 bytes), else the status's description.
inline void check(acb_status status) {
  if (status == ACB_STATUS_OK) return;
  char buf[1024];
  size_t n = 0;
  acb_status got = acb_error_message(buf, sizeof buf, &n);
  if ((got != ACB_STATUS_OK && got != ACB_STATUS_BUFFER_TOO_SMALL) || n == 0) {
    throw Error(status, status_message(status));
  }
  throw Error(status, std::string(buf, n));
}

// The ABI version of the libacb this program loaded; ACB_ABI_VERSION is the one it was
// compiled against.
inline uint32_t abi_version() noexcept { return acb_abi_version(); }

// Client settings: starts from the environment (acb_config_new), then each setter overrides
// one. A Client copies it, so one Config can make several clients.
class Config {
 public:
  Config() { check(acb_config_new(&p_)); }
  ~Config() { acb_config_free(p_); }
  Config(Config&& o) noexcept : p_(std::exchange(o.p_, nullptr)) {}
  Config& operator=(Config&& o) noexcept { std::swap(p_, o.p_); return *this; }
  Config(const Config&) = delete;
  Config& operator=(const Config&) = delete;
  // "unix:/path.sock" or "tcp:IP:PORT".
  Config& assigner(const std::string& addr) { check(acb_config_set_assigner(p_, addr.data(), addr.size())); return *this; }
  // 1 to 256 bytes, no control characters.
  Config& job(const std::string& name) { check(acb_config_set_job(p_, name.data(), name.size())); return *this; }
  // One member of the group `name` of `size` processes (1 to 4096), whose requests are granted
  // together; "" for none. Default: ACB_GROUP/ACB_GROUP_SIZE, else torchrun's or Slurm's.
  Config& group(const std::string& name, uint32_t size) { check(acb_config_set_group(p_, name.data(), name.size(), size)); return *this; }
  // A uid allowed to own the assigner's socket besides root and this user (UINT32_MAX: none).
  Config& assigner_uid(uint32_t uid) { check(acb_config_set_assigner_uid(p_, uid)); return *this; }
  Config& auth_token(const std::string& token) { check(acb_config_set_auth_token(p_, token.data(), token.size())); return *this; }
  Config& connect_timeout_ms(uint32_t ms) { check(acb_config_set_connect_timeout_ms(p_, ms)); return *this; }
  Config& connect_retries(uint32_t retries) { check(acb_config_set_connect_retries(p_, retries)); return *this; }
  Config& pin_gpus(bool pin) { check(acb_config_set_pin_gpus(p_, pin)); return *this; }
  Config& eager_release(bool eager) { check(acb_config_set_eager_release(p_, eager)); return *this; }
  // "host" or "cuda".
  Config& memory_backend(const std::string& name) { check(acb_config_set_memory_backend(p_, name.data(), name.size())); return *this; }
  // Under lazy release, give an idle GPU back after this long (0: never).
  Config& idle_timeout_ms(uint32_t ms) { check(acb_config_set_idle_timeout_ms(p_, ms)); return *this; }
  acb_config* get() const noexcept { return p_; }

 private:
  acb_config* p_ = nullptr;
};

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
  acb_request* get() const noexcept { return p_; }

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
  const acb_lease* get() const noexcept { return p_; }

 private:
  acb_lease* p_ = nullptr;
};

// A client of the assigner; owns its libacb handle.
class Client {
 public:
  // From the environment (ACB_ASSIGNER, ACB_JOB_ID).
  Client() : Client(std::string(), std::string()) {}
  // An explicit assigner address and job name; empty strings keep the environment's.
  Client(const std::string& assigner, const std::string& job) : Client(config(assigner, job)) {}
  // Any settings (the config is copied: it may go right after).
  explicit Client(const Config& config) { check(acb_client_new(config.get(), &p_)); }
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

  // The assigner's status (its `status --json`), as JSON text. One connection attempt.
  std::string status_json() const {
    std::string buf(64 * 1024, '\0');
    for (;;) {
      size_t n = 0;
      acb_status status = acb_client_status_json(p_, &buf[0], buf.size(), &n);
      // libacb cuts a text that does not fit; ask again with room for twice as much.
      if (status == ACB_STATUS_BUFFER_TOO_SMALL && buf.size() < (size_t{1} << 30)) {
        buf.resize(buf.size() * 2);
        continue;
      }
      check(status);
      buf.resize(n);
      return buf;
    }
  }

  // Swappable device memory (see acb::DeviceMemory for an owner): in a GPU phase only.
  void* alloc(size_t bytes) const {
    void* ptr = nullptr;
    check(acb_client_alloc(p_, bytes, &ptr));
    return ptr;
  }
  // Resident or swapped out; nullptr does nothing.
  void dealloc(void* ptr) const { check(acb_client_dealloc(p_, ptr)); }
  // Read-only memory (weights) is copied to the host once; later swap-outs skip it.
  void set_read_only(void* ptr, bool read_only = true) const { check(acb_client_set_read_only(p_, ptr, read_only)); }
  acb_memory_stats memory_stats() const {
    acb_memory_stats stats{};
    check(acb_client_memory_stats(p_, &stats));
    return stats;
  }

  // Makes this client the one acb_allocator_malloc/_free (and the cudaMalloc interposer) use;
  // acb::Client's destructor unsets it.
  void set_as_allocator() const { check(acb_allocator_set_client(p_)); }

  // The libacb handle, for C calls; it stays this object's.
  acb_client* get() const noexcept { return p_; }

 private:
  static Config config(const std::string& assigner, const std::string& job) {
    Config c;
    if (!assigner.empty()) c.assigner(assigner);
    if (!job.empty()) c.job(job);
    return c;
  }
  acb_client* p_ = nullptr;
};

// The process-wide allocator entry points (acb_allocator_malloc and acb_allocator_free are
// the C functions a framework such as PyTorch takes as pointers, so they have no wrapper).
namespace allocator {
// Unsets the client set with Client::set_as_allocator.
inline void unset_client() { check(acb_allocator_set_client(nullptr)); }
inline bool has_client() noexcept { return acb_allocator_has_client(); }
// Frees ptr if it is memory of the set client (true); false if it is not libacb's.
inline bool try_free(void* ptr) {
  acb_status status = acb_allocator_try_free(ptr);
  if (status == ACB_STATUS_INVALID_ARGUMENT) return false;
  check(status);
  return true;
}
}  // namespace allocator

// Automatic mode at the CUDA driver (the interposer, libacb_preload.so, preloaded by
// `agarun --mode auto`): it starts itself; these are for programs that look at it or know when
// they are done with the GPU for a while. (acb_auto_enter and acb_auto_exit, the gate around
// each gated driver call, and acb_auto_note_context and acb_auto_forget_context, which follow
// the program's CUDA contexts, are the interposer's: no wrapper.)
namespace automatic {
// Starts automatic mode in this process if the interposer has not (false if it cannot: no CUDA
// driver, a bad setting; it says why on stderr and the program runs unbrokered).
inline bool start() noexcept { return acb_auto_start() == ACB_STATUS_OK; }
inline bool active() noexcept { return acb_auto_active(); }
// Ends the GPU phase now if no gated call is in flight (true if it ended).
inline bool release() noexcept { return acb_auto_release() == ACB_STATUS_OK; }
inline acb_auto_stats stats() {
  acb_auto_stats s{};
  check(acb_auto_get_stats(&s));
  return s;
}
}  // namespace automatic

// Swappable device memory that frees itself: allocated in the constructor (in a GPU phase),
// freed in the destructor (in a phase or not). It keeps its address across swaps. It must not
// outlive its client.
class DeviceMemory {
 public:
  DeviceMemory(const Client& client, size_t bytes) : client_(&client), ptr_(client.alloc(bytes)), size_(bytes) {}
  ~DeviceMemory() {
    // A destructor must not throw; the only failure is a pointer libacb did not hand out,
    // which the constructor rules out.
    if (ptr_ != nullptr) acb_client_dealloc(client_->get(), ptr_);
  }
  DeviceMemory(DeviceMemory&& o) noexcept
      : client_(o.client_), ptr_(std::exchange(o.ptr_, nullptr)), size_(std::exchange(o.size_, 0)) {}
  DeviceMemory& operator=(DeviceMemory&& o) noexcept {
    std::swap(client_, o.client_);
    std::swap(ptr_, o.ptr_);
    std::swap(size_, o.size_);
    return *this;
  }
  DeviceMemory(const DeviceMemory&) = delete;
  DeviceMemory& operator=(const DeviceMemory&) = delete;
  void* get() const noexcept { return ptr_; }
  size_t size() const noexcept { return size_; }
  void set_read_only(bool read_only = true) const { client_->set_read_only(ptr_, read_only); }

 private:
  const Client* client_;
  void* ptr_;
  size_t size_;
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
