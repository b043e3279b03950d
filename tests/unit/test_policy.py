from comfyfleet.domain.policy import RetryPolicy


def test_exponential_delays_without_jitter():
    policy = RetryPolicy(max_attempts=6, base_s=1.0, cap_s=16.0, jitter=False)
    assert [policy.delay_s(n, random_unit=0.5) for n in range(1, 7)] == [1, 2, 4, 8, 16, 16]


def test_full_jitter_scales_the_ceiling():
    policy = RetryPolicy(base_s=1.0, cap_s=16.0)
    assert policy.delay_s(3, random_unit=0.25) == 1.0
    assert policy.delay_s(3, random_unit=0.0) == 0.0


def test_retry_after_is_a_floor():
    policy = RetryPolicy(base_s=1.0, cap_s=16.0)
    assert policy.delay_s(1, random_unit=0.1, retry_after_s=7.0) == 7.0


def test_attempt_budget():
    policy = RetryPolicy(max_attempts=3)
    assert policy.allows_another(2) and not policy.allows_another(3)
