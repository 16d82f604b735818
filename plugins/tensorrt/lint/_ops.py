"""What TensorRT's ONNX parser accepts: operator table, opset range, plugin names, quantized types.

Data only, no logic; :mod:`converter.plugins.tensorrt.lint._rules` reads it. Every table names its source.
TensorRT versions are ``(major, minor)`` tuples.
"""

from __future__ import annotations

from onnx import TensorProto

Version = tuple[int, int]

OPERATORS_MD_VERSION: Version = (10, 15)
"""The operators.md these tables transcribe: onnx/onnx-tensorrt docs/operators.md, "TensorRT 10.15 supports
operators in the inclusive range of opset 9 to opset 24"."""

SUPPORTED_OPS: frozenset[str] = frozenset(
    """
    Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh Attention AveragePool BatchNormalization
    BlackmanWindow Cast CastLike Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh
    CumSum DeformConv DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike
    Flatten Floor Gather GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool
    Greater GreaterOrEqual GridSample GroupNormalization GRU HammingWindow HannWindow HardSigmoid HardSwish
    Hardmax Identity If ImageScaler InstanceNormalization IsInf IsNaN LayerNormalization LeakyRelu Less
    LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization LpPool MatMul Max MaxPool Mean
    MeanVarianceNormalization Min Mish Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or Pad
    ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike RandomUniform RandomUniformLike
    Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd
    ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence RMSNormalization RNN RoiAlign RotaryEmbedding
    Round STFT ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size
    Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh TensorScatter
    ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
    """.split()
)
"""Operators marked "Y" in operators.md for TensorRT 10.15 (onnx/onnx-tensorrt docs/operators.md)."""

UNSUPPORTED_OPS: frozenset[str] = frozenset(
    """
    AffineGrid Bernoulli BitShift BitwiseAnd BitwiseNot BitwiseOr BitwiseXor Col2Im CenterCropPad Compress
    ConcatFromSequence ConvInteger DFT Det DynamicQuantizeLinear ImageDecoder MatMulInteger MaxRoiPool MaxUnpool
    MelWeightMatrix Multinomial NegativeLogLikelihoodLoss Optional OptionalGetElement OptionalHasElement
    QLinearConv QLinearMatMul RegexFullMatch SequenceAt SequenceConstruct SequenceEmpty SequenceErase
    SequenceInsert SequenceLength SequenceMap SoftmaxCrossEntropyLoss SplitToSequence StringConcat
    StringNormalizer StringSplit TfIdfVectorizer Unique
    """.split()
)
"""Operators marked "N" in operators.md for TensorRT 10.15 (onnx/onnx-tensorrt docs/operators.md)."""

OPS_ADDED_IN: dict[str, Version] = {
    # onnx/onnx-tensorrt docs/Changelog.md
    "RandomNormal": (8, 5), "RandomUniform": (8, 5), "MeanVarianceNormalization": (8, 5), "RoiAlign": (8, 5),
    "Mod": (8, 5), "Trilu": (8, 5), "GridSample": (8, 5), "NonZero": (8, 5),
    "GroupNormalization": (8, 6), "LayerNormalization": (8, 6), "IsInf": (8, 6),
    "Hardmax": (9, 2),
    "DeformConv": (10, 1),
    "BlackmanWindow": (10, 4), "HammingWindow": (10, 4), "HannWindow": (10, 4),
    "STFT": (10, 5),
    "RotaryEmbedding": (10, 15), "RMSNormalization": (10, 15), "TensorScatter": (10, 15),
    # NVIDIA/TensorRT release v11.2: "Added support for the DFT operator"
    "DFT": (11, 2),
}
"""The first TensorRT version whose parser imports the operator, where a changelog says so."""

OPSET_RANGES: tuple[tuple[Version, int, int, str], ...] = (
    ((8, 0), 7, 13, "operators.md for TensorRT 8.0: 'supports operators up to Opset 13'"),
    ((8, 5), 7, 17, "operators.md for TensorRT 8.5: 'supports operators up to Opset 17'"),
    ((9, 2), 7, 19, "operators.md for TensorRT 9.2: 'supports operators up to Opset 19'"),
    ((10, 0), 9, 20, "operators.md for TensorRT 10.0: 'inclusive range of opset 9 to opset 20'"),
    ((10, 15), 9, 24, "operators.md for TensorRT 10.15: 'inclusive range of opset 9 to opset 24'"),
    ((11, 5), 9, 25, "NVIDIA/TensorRT release v11.5: 'Added support for ONNX opset 25'"),
)
"""Documented default-domain opset ranges of the ONNX parser, oldest first. Before 10.0 only a maximum is
documented; 7 is the 'backward compatible to opset 7' of the 8.x developer guide."""

INT64_NATIVE_SINCE: Version = (9, 0)
"""onnx/onnx-tensorrt docs/Changelog.md, 9.0 EA: "Added support for INT64 data type. The ONNX parser no
longer automatically casts INT64 to INT32." Before it, the parser warned "Your ONNX model has been generated
with INT64 weights, while TensorRT does not natively support INT64. Attempting to cast down to INT32" and
clamped out-of-range values (onnx/tensorflow-onnx#883)."""

QUANTIZED_TYPES: dict[int, str] = {
    TensorProto.INT8: "INT8",
    TensorProto.FLOAT8E4M3FN: "FP8 (E4M3)",
    TensorProto.INT4: "INT4",
    TensorProto.FLOAT4E2M1: "FP4 (E2M1)",
}
"""Types TensorRT quantizes to: "TensorRT only allows FP8, INT8, INT4, and FP4 quantization"
(onnx/onnx-tensorrt onnxOpImporters.cpp, QuantDequantLinearHelper)."""

WEIGHT_ONLY_TYPES: frozenset[int] = frozenset({TensorProto.INT4})
""""INT4 (signed 4-bit integer, weight-only quantization)" (TensorRT docs, Working with Quantized Types)."""

TRT_PLUGINS: frozenset[str] = frozenset(
    """
    BatchTilePlugin_TRT BatchedNMS_TRT BatchedNMSDynamic_TRT CustomQKVToContextPluginDynamic Clip_TRT CoordConvAC
    CropAndResize CropAndResizeDynamic DecodeBbox3DPlugin DetectionLayer_TRT DisentangledAttention_TRT
    EfficientNMS_TRT EfficientNMS_ONNX_TRT CustomEmbLayerNormPluginDynamic CustomFCPluginDynamic FlattenConcat_TRT
    CustomGeluPluginDynamic GenerateDetection_TRT GridAnchor_TRT GridAnchorRect_TRT GroupNormalizationPlugin
    InstanceNormalization_TRT LReLU_TRT ModulatedDeformConv2d MultilevelCropAndResize_TRT MultilevelProposeROI_TRT
    MultiscaleDeformableAttnPlugin_TRT NMS_TRT NMSDynamic_TRT Normalize_TRT RPROI_TRT PillarScatterPlugin
    PriorBox_TRT ProposalLayer_TRT Proposal ProposalDynamic PyramidROIAlign_TRT Region_TRT Reorg_TRT ROIAlign_TRT
    ResizeNearest_TRT ScatterElements ScatterND CustomSkipLayerNormPluginDynamic SpecialSlice_TRT Split
    VoxelGeneratorPlugin
    """.split()
)
"""Plugins shipped with TensorRT (NVIDIA/TensorRT plugin/README.md). The parser imports a node it has no
importer for as the registered plugin of the same op_type ("Attempting to import as plugin")."""

ONNX_DOMAINS: frozenset[str] = frozenset({"", "ai.onnx"})

PARSER_OP_PREFIX = "TRT_"
"""The parser registers its own operators (TRT_QuantizedAttention, TRT_MXFP8QuantizeLinear, ...) as builtin
importers, whatever their domain (onnx/onnx-tensorrt onnxOpImporters.cpp)."""

TENSOR_TYPES: frozenset[int] = frozenset({
    TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE, TensorProto.INT32,
    TensorProto.INT64, TensorProto.INT8, TensorProto.UINT8, TensorProto.BOOL, TensorProto.FLOAT8E4M3FN,
    TensorProto.INT4, TensorProto.FLOAT4E2M1,
})
"""ONNX element types TensorRT represents: "DOUBLE, FLOAT32, FLOAT16, BFLOAT16, FP8, FP4, INT32, INT64, INT8,
INT4, UINT8, and BOOL" (onnx/onnx-tensorrt docs/operators.md, TensorRT 10.15). DOUBLE is cast to FLOAT."""

PARSER_ONNX_RELEASES: tuple[tuple[Version, str, str], ...] = (
    ((8, 6), "1.13.1", "onnx/onnx-tensorrt docs/Changelog.md, 8.6 GA: 'Updated ONNX submodule to v1.13.1'"),
    ((9, 0), "1.14.0", "onnx/onnx-tensorrt docs/Changelog.md, 9.0 EA: 'Updated ONNX submodule to v1.14.0'"),
    ((10, 6), "1.17.0", "onnx/onnx-tensorrt docs/Changelog.md, 10.6 GA: 'Updated ONNX submodule version to 1.17.0'"),
    ((11, 0), "1.20.0", "TensorRT docs, ONNX Opset Guide: TensorRT 11.x, 'ONNX package version 1.20.0'"),
    ((11, 5), "1.22.0", "NVIDIA/TensorRT release v11.5: 'updated the supported ONNX release to 1.22.0'"),
)
"""The ONNX release the parser is built against, where documented, oldest first."""
