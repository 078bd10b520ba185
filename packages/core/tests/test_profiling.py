"""Kernel time by category: names of real kernels land in the right category; a CPU run profiles a step."""
import pytest
import torch
import torch.nn.functional as F
from trainstack.profiling import CATEGORIES, kernel_category, profile_steps

# Kernel names as torch.profiler reports them on H100/A100 runs (cuBLAS, CUTLASS, flash, Inductor, NCCL)
KERNELS = {
    "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1x1_execute_segment_k_off": "matmul",
    "nvjet_tst_128x256_64x4_1x2_h_bz_coopA_NNT": "matmul",
    "ampere_bf16_s16816gemm_bf16_128x128_ldg8_f2f_stages_32x5_tn": "matmul",
    "void cublasLt::splitKreduce_kernel<32, 16, int, float, __nv_bfloat16>": "matmul",
    "triton_tem_fused_flex_attention_0": "attention fwd",
    "triton_tem_fused_flex_attention_backward_zeros_1": "attention bwd",
    "void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64, 128, 64, 4>, false>": "attention fwd",
    "void pytorch_flash::flash_bwd_dq_dk_dv_loop_seqk_parallel_kernel<Flash_bwd_kernel_traits<64>>": "attention bwd",
    "void flash::flash_bwd_convert_dq_kernel<Flash_bwd_kernel_traits<64, 128, 128, 8>>": "attention bwd",
    "fmha_cutlassF_bf16_aligned_64x64_rf_sm80": "attention fwd",
    "fmha_cutlassB_bf16_aligned_64x64_k64_sm80": "attention bwd",
    "cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_3_64x64x64_4x1x1": "attention fwd",
    "cudnn_generated_fort_native_sdpa_sm90_flash_bprop_wgmma_f16_knob_7_64x128x64_4x1x1": "attention bwd",
    "triton_per_fused_add_native_layer_norm_native_layer_norm_backward_3": "norms",
    "void at::native::(anonymous namespace)::vectorized_layer_norm_kernel<c10::BFloat16, float>": "norms",
    "triton_poi_fused_add_cat_mul_neg_slice_2": "elementwise",
    "triton_poi_fused_gelu_gelu_backward_5": "elementwise",
    "void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float>>": "elementwise",
    "void at::native::(anonymous namespace)::multi_tensor_apply_kernel<FusedAdamMathFunctor>": "optimizer",
    "void at::native::multi_tensor_apply_kernel<TensorListMetadata<1>, at::native::(anonymous)::foreach_norm>": "optimizer",
    "ncclDevKernel_AllReduce_Sum_bf16_RING_LL(ncclDevKernelArgsStorage<4096ul>)": "communication",
    "Memcpy HtoD (Pageable -> Device)": "memory",
    "Memset (Device)": "memory",
    "aten::_scaled_dot_product_flash_attention_for_cpu_backward": "attention bwd",
    "aten::addmm": "matmul",
    "some_new_kernel_name": "other",
}


@pytest.mark.parametrize("name,category", KERNELS.items())
def test_kernel_names_land_in_their_category(name, category):
    assert kernel_category(name) == category


def test_profile_of_a_cpu_step_adds_up():
    torch.manual_seed(0)
    lin, norm = torch.nn.Linear(32, 32), torch.nn.LayerNorm(32)
    opt = torch.optim.AdamW([*lin.parameters(), *norm.parameters()], foreach=True)

    def step():
        x = norm(lin(torch.randn(2, 4, 16, 32)))
        F.scaled_dot_product_attention(x, x, x).sum().backward()
        opt.step()
        opt.zero_grad()

    step()
    table = profile_steps(step, steps=2)
    assert table.device == "cpu" and table.steps == 2 and table.wall_seconds > 0
    spent = table.by_category()
    assert tuple(spent) == CATEGORIES
    for category in ("matmul", "attention fwd", "attention bwd", "norms", "optimizer"):
        assert spent[category] > 0, category
    assert sum(spent.values()) == pytest.approx(table.total_seconds)
    assert [r.seconds for r in table.rows] == sorted((r.seconds for r in table.rows), reverse=True)
    record = table.as_dict(top=5)
    assert set(record["ms_per_step_by_category"]) == set(CATEGORIES) and len(record["top"]) == 5
    assert "not a GPU profile" in table.format()
    with pytest.raises(ValueError, match="steps must be >= 1"):
        profile_steps(step, steps=0)


def test_host_time_in_cuda_calls_is_listed_apart_from_the_kernels():
    """Host-side CUDA calls (a graph launch that waited for room in the GPU's queue, a synchronize)
    are reported per step, most first, and never counted as kernel time."""
    from types import SimpleNamespace

    from torch.autograd import DeviceType
    from trainstack.profiling import kernel_profile

    def event(key, device, self_cpu=0.0, self_device=0.0, annotation=False):
        return SimpleNamespace(key=key, device_type=device, count=1, self_cpu_time_total=self_cpu,
                               self_device_time_total=self_device, is_user_annotation=annotation)

    events = [event("Command Buffer Full", DeviceType.CPU, self_cpu=74_000.0),
              event("cudaGraphLaunch", DeviceType.CPU, self_cpu=9_000.0),
              event("cudnnConvolutionForward", DeviceType.CPU, self_cpu=50.0),
              event("aten::copy_", DeviceType.CPU, self_cpu=500.0),
              event("nvjet_sm90_tst_128x192", DeviceType.CUDA, self_device=60_000.0),
              # the optimizer's record_function range: on the host, and spanning its kernels on the GPU
              event("Optimizer.step#AdamW.step", DeviceType.CPU, self_cpu=300.0),
              event("Optimizer.step#AdamW.step", DeviceType.CUDA, self_device=5_000.0, annotation=True),
              event("multi_tensor_apply_kernel", DeviceType.CUDA, self_device=4_900.0),
              # Inductor names its host range after the Triton kernel it launches: the kernel still counts
              event("triton_poi_fused_gelu_4", DeviceType.CPU, self_cpu=20.0),
              event("triton_poi_fused_gelu_4", DeviceType.CUDA, self_device=3_000.0)]
    prof = SimpleNamespace(key_averages=lambda: events)
    table = kernel_profile(prof, steps=2, wall_seconds=0.14, cuda=True)
    assert [r.name for r in table.rows] == ["nvjet_sm90_tst_128x192", "multi_tensor_apply_kernel",
                                            "triton_poi_fused_gelu_4"]
    assert list(table.host_calls) == ["Command Buffer Full", "cudaGraphLaunch"]
    assert "host, in CUDA calls (ms/step): Command Buffer Full 37.00, cudaGraphLaunch 4.50" in table.format()
    assert table.as_dict()["host_ms_per_step_in_cuda_calls"] == {"Command Buffer Full": 37.0, "cudaGraphLaunch": 4.5}
