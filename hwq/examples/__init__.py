"""The example models hwq ships, by name: what `hwq sweep` specs call built-in examples.
Each is (model spec, input shape, calibration set), as `hwq compile` takes them."""

EXAMPLES = {
    "lenet_digits": ("hwq.examples.lenet_digits:LeNet", "1x8x8", "digits"),
}
