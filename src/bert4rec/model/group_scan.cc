// Bert4recGroupScan: one read of a block of scores gives both what the ranked pass needs from it,
// the maximum of every group of 64 consecutive items (for the exact top-k) and, per row, how many
// scores reach the row's threshold (for the exact rank). TensorFlow's own ops read the block
// twice and write a byte per score on the way (see model/recommend.py and the README's scale
// benchmark); built and loaded by model/kernel.py.
#include <immintrin.h>

#include <cstdint>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace {

using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;
using tensorflow::TensorShape;
using tensorflow::shape_inference::DimensionHandle;
using tensorflow::shape_inference::InferenceContext;
using tensorflow::shape_inference::ShapeHandle;

constexpr int64_t kGroup = 64;
// One group's maximum, and how many of its scores reach the threshold, with the widest vectors
// the compiler was told about (-march=native: model/kernel.py builds on the machine that runs it).
// Maxima of non-NaN floats are exact in any order, and -inf (the padding items) is handled as a
// number, so every variant gives TensorFlow's reduce_max and a count of `score >= threshold`.
#if defined(__AVX512F__)
inline float GroupScan(const float* items, float threshold, int32_t* reached) {
  const __m512 limit = _mm512_set1_ps(threshold);
  __m512 best = _mm512_loadu_ps(items);
  int32_t count = __builtin_popcount(_mm512_cmp_ps_mask(best, limit, _CMP_GE_OQ));
  for (int64_t i = 16; i < kGroup; i += 16) {
    const __m512 values = _mm512_loadu_ps(items + i);
    best = _mm512_max_ps(best, values);
    count += __builtin_popcount(_mm512_cmp_ps_mask(values, limit, _CMP_GE_OQ));
  }
  *reached += count;
  return _mm512_reduce_max_ps(best);
}
#elif defined(__AVX2__)
inline float GroupScan(const float* items, float threshold, int32_t* reached) {
  const __m256 limit = _mm256_set1_ps(threshold);
  __m256 best = _mm256_loadu_ps(items);
  int32_t count = __builtin_popcount(_mm256_movemask_ps(_mm256_cmp_ps(best, limit, _CMP_GE_OQ)));
  for (int64_t i = 8; i < kGroup; i += 8) {
    const __m256 values = _mm256_loadu_ps(items + i);
    best = _mm256_max_ps(best, values);
    count += __builtin_popcount(_mm256_movemask_ps(_mm256_cmp_ps(values, limit, _CMP_GE_OQ)));
  }
  *reached += count;
  float lanes[8];
  _mm256_storeu_ps(lanes, best);
  float group_max = lanes[0];
  for (int j = 1; j < 8; ++j) group_max = lanes[j] > group_max ? lanes[j] : group_max;
  return group_max;
}
#else
inline float GroupScan(const float* items, float threshold, int32_t* reached) {
  float group_max = items[0];
  for (int64_t i = 0; i < kGroup; ++i) {
    group_max = items[i] > group_max ? items[i] : group_max;
    *reached += items[i] >= threshold;
  }
  return group_max;
}
#endif

void ScanRow(const float* scores, int64_t groups, float threshold, float* maxima, int32_t* count) {
  int32_t total = 0;
  for (int64_t g = 0; g < groups; ++g) maxima[g] = GroupScan(scores + g * kGroup, threshold, &total);
  *count = total;
}

class GroupScanOp : public OpKernel {
 public:
  explicit GroupScanOp(OpKernelConstruction* context) : OpKernel(context) {}

  void Compute(OpKernelContext* context) override {
    const Tensor& scores = context->input(0);
    const Tensor& threshold = context->input(1);
    OP_REQUIRES(context, scores.dims() == 2 && scores.dim_size(1) % kGroup == 0,
                absl::InvalidArgumentError("scores must be (batch, a multiple of 64)"));
    const int64_t batch = scores.dim_size(0), width = scores.dim_size(1), groups = width / kGroup;
    OP_REQUIRES(context, threshold.NumElements() == batch,
                absl::InvalidArgumentError("threshold must hold one value per row of scores"));
    Tensor* maxima = nullptr;
    Tensor* count = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(0, TensorShape({batch, groups}), &maxima));
    OP_REQUIRES_OK(context, context->allocate_output(1, TensorShape({batch}), &count));
    const float* in = scores.flat<float>().data();
    const float* limit = threshold.flat<float>().data();
    float* out = maxima->flat<float>().data();
    int32_t* counted = count->flat<int32_t>().data();
    auto rows = [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        ScanRow(in + row * width, groups, limit[row], out + row * groups, counted + row);
      }
    };
    context->device()->tensorflow_cpu_worker_threads()->workers->ParallelFor(batch, width * 2, rows);
  }
};

}  // namespace

REGISTER_OP("Bert4recGroupScan")
    .Input("scores: float")
    .Input("threshold: float")
    .Output("maxima: float")
    .Output("count: int32")
    .SetShapeFn([](InferenceContext* context) {
      ShapeHandle scores;
      TF_RETURN_IF_ERROR(context->WithRank(context->input(0), 2, &scores));
      DimensionHandle groups;
      TF_RETURN_IF_ERROR(context->Divide(context->Dim(scores, 1), kGroup, true, &groups));
      context->set_output(0, context->Matrix(context->Dim(scores, 0), groups));
      context->set_output(1, context->Vector(context->Dim(scores, 0)));
      return absl::OkStatus();
    });

REGISTER_KERNEL_BUILDER(Name("Bert4recGroupScan").Device(tensorflow::DEVICE_CPU), GroupScanOp);
