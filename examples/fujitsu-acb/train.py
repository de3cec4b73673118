"""A training script as users of Fujitsu's AI Computing Broker write it: manual mode through
`adaptive_gpu_allocator`, nothing acb-specific. acb runs it unchanged (issue 13 item 5):

    gpu_assigner --port 50051 --scheduler gpu-sharing start
    AGA_GPU_ALLOC_SERVER_ADDRESS=127.0.0.1 AGA_GPU_ALLOC_SERVER_PORT=50051 python train.py [EPOCHS] [CPU_MS]
    AGA_REQUEST_DEVICE=cpu python train.py        # the same program, on the CPU, with no assigner
    gpu_assigner stop

Each epoch prepares its data on the CPU (a CPU phase: the GPU serves other jobs meanwhile), then
trains on the GPU between on_device_begin and on_device_end. It prints each epoch's loss and a
checksum of the final weights: the same with and without acb.
"""
import sys
import time

import torch

from adaptive_gpu_allocator import PyTorchAdaptiveGPUAllocator


def batches(epoch, n=8, size=32):
    g = torch.Generator().manual_seed(epoch)
    out = []
    for _ in range(n):
        x = torch.randn(size, 16, generator=g)
        out.append((x, x[:, :4].sum(dim=1, keepdim=True).tanh()))
    return out


def main(epochs=3, cpu_ms=100):
    torch.manual_seed(0)
    device = torch.device("cuda")
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    allocator = PyTorchAdaptiveGPUAllocator(model, optimizer, scheduler, device)
    for epoch in range(epochs):
        data = batches(epoch)  # CPU phase
        time.sleep(cpu_ms / 1000)
        allocator.on_device_begin(memory_usage_hint=1 << 30)
        where = allocator.get_device()
        total = 0.0
        for x, y in data:
            x, y = allocator.move_tensor_to_device(x), allocator.move_tensor_to_device(y)
            loss = torch.nn.functional.mse_loss(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item()
        scheduler.step()
        allocator.on_device_end()
        print(f"epoch {epoch}: loss {total / len(data):.6f} on {where}", flush=True)
    allocator.finalize()
    checksum = sum(p.detach().double().sum().item() for p in model.parameters())
    print(f"checksum {checksum:.17g}")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
