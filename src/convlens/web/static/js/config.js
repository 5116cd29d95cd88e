// Constants shared by the views.
export const API = '/api/v1';
export const PAGE_SIZE = 10; // neurons per column before paging (CNN Explainer's Tiny VGG has 10)
export const MAX_NEURON = 56; // px, largest neuron thumbnail
export const MIN_NEURON = 4; // a deep network (ResNet-18: 60 columns) at 800 px still fits the width
export const OVERVIEW_HEIGHT_MIN = 520;
export const ANIMATION_MS = 350; // one window step in the convolution animation
export const MAX_INTERMEDIATE = 8; // intermediate maps drawn in the convolution view (per page)
export const LAYER_COLORS = {
  input: '#6b7280', conv: '#2563eb', activation: '#d97706', maxpool: '#059669', avgpool: '#059669',
  adaptive_pool: '#059669', batchnorm: '#9333ea', norm: '#9333ea', flatten: '#64748b',
  linear: '#dc2626', softmax: '#dc2626', add: '#0891b2', concat: '#0891b2', other: '#6b7280',
};
export const OVERVIEW_MAX_SIZE = 64; // trace maps larger than this are pooled down for the overview
export const MAX_CLASSES = 10; // output rows shown (the most probable first beyond this)
// A model whose layers hold more numbers than this in all (its full-size activations; VGG-16
// at 224×224: ~15 M) gets its overview trace quantized to uint8 per channel (a quarter of the
// bytes); detail views then fetch the exact values they print. `?trace=uint8|float32` in the
// page's URL overrides the rule.
export const QUANTIZE_ABOVE = 1_000_000;
