"""Writes data/python/tasks.jsonl: small Python tasks, each with assert tests for the `code` reward.

Row format: {"id", "prompt", "tests": ["assert ...", ...], "entry_point"}; every test is one snippet
run after the solution in its namespace. Run `python data/python/make_tasks.py` to regenerate.
"""

import json
from pathlib import Path

TASKS = [
    ("add", "add(a, b) returning the sum of two integers", ["assert add(1, 2) == 3", "assert add(-4, 4) == 0", "assert add(10**12, 1) == 10**12 + 1"]),
    ("is_even", "is_even(n) returning True when n is even", ["assert is_even(4)", "assert not is_even(7)", "assert is_even(0)", "assert not is_even(-3)"]),
    ("factorial", "factorial(n) for n >= 0", ["assert factorial(0) == 1", "assert factorial(5) == 120", "assert factorial(10) == 3628800"]),
    ("fib", "fib(n), the n-th Fibonacci number with fib(0) == 0 and fib(1) == 1", ["assert fib(0) == 0", "assert fib(1) == 1", "assert fib(10) == 55", "assert fib(30) == 832040"]),
    ("reverse_string", "reverse_string(s) returning s reversed", ["assert reverse_string('abc') == 'cba'", "assert reverse_string('') == ''", "assert reverse_string('a') == 'a'"]),
    ("is_palindrome", "is_palindrome(s), ignoring case and non-letters", ["assert is_palindrome('Racecar')", "assert is_palindrome('A man, a plan, a canal: Panama')", "assert not is_palindrome('hello')"]),
    ("count_vowels", "count_vowels(s), the number of vowels (a, e, i, o, u, any case) in s", ["assert count_vowels('hello') == 2", "assert count_vowels('AEIOU') == 5", "assert count_vowels('xyz') == 0"]),
    ("max_of", "max_of(xs) returning the largest element of a non-empty list without using max()", ["assert max_of([1, 5, 3]) == 5", "assert max_of([-2, -7]) == -2", "assert max_of([4]) == 4"]),
    ("gcd", "gcd(a, b), the greatest common divisor of two positive integers", ["assert gcd(12, 18) == 6", "assert gcd(7, 13) == 1", "assert gcd(100, 10) == 10"]),
    ("is_prime", "is_prime(n) for integers n", ["assert is_prime(2)", "assert is_prime(97)", "assert not is_prime(1)", "assert not is_prime(91)"]),
    ("flatten", "flatten(xss) turning a list of lists into one list", ["assert flatten([[1, 2], [3]]) == [1, 2, 3]", "assert flatten([]) == []", "assert flatten([[], [4]]) == [4]"]),
    ("unique", "unique(xs) returning the elements of xs without duplicates, first occurrences in order", ["assert unique([3, 1, 3, 2, 1]) == [3, 1, 2]", "assert unique([]) == []"]),
    ("word_count", "word_count(s) returning a dict from each whitespace-separated word to its count", ["assert word_count('a b a') == {'a': 2, 'b': 1}", "assert word_count('') == {}"]),
    ("celsius_to_fahrenheit", "celsius_to_fahrenheit(c) converting a temperature", ["assert celsius_to_fahrenheit(0) == 32", "assert celsius_to_fahrenheit(100) == 212", "assert abs(celsius_to_fahrenheit(-40) + 40) < 1e-9"]),
    ("sum_digits", "sum_digits(n), the sum of the decimal digits of a non-negative integer", ["assert sum_digits(0) == 0", "assert sum_digits(1234) == 10", "assert sum_digits(99999) == 45"]),
    ("binary_search", "binary_search(xs, x) returning the index of x in the sorted list xs, or -1", ["assert binary_search([1, 3, 5, 7], 5) == 2", "assert binary_search([1, 3, 5, 7], 4) == -1", "assert binary_search([], 1) == -1"]),
    ("merge_sorted", "merge_sorted(a, b) merging two sorted lists into one sorted list", ["assert merge_sorted([1, 4], [2, 3]) == [1, 2, 3, 4]", "assert merge_sorted([], [1]) == [1]", "assert merge_sorted([], []) == []"]),
    ("capitalize_words", "capitalize_words(s) upper-casing the first letter of each space-separated word", ["assert capitalize_words('hello world') == 'Hello World'", "assert capitalize_words('a') == 'A'"]),
    ("second_largest", "second_largest(xs), the second largest distinct value of xs (at least two distinct values)", ["assert second_largest([1, 2, 3]) == 2", "assert second_largest([5, 5, 4]) == 4", "assert second_largest([-1, -2]) == -2"]),
    ("rotate", "rotate(xs, k) rotating the list xs right by k positions", ["assert rotate([1, 2, 3, 4], 1) == [4, 1, 2, 3]", "assert rotate([1, 2, 3], 3) == [1, 2, 3]", "assert rotate([], 2) == []"]),
]


def main() -> None:
    out = Path(__file__).with_name("tasks.jsonl")
    with out.open("w") as f:
        for i, (name, spec, tests) in enumerate(TASKS):
            prompt = f"Write a Python function {spec}. Answer with the code in a ```python block."
            f.write(json.dumps({"id": f"py-{i:03d}", "prompt": prompt, "tests": tests, "entry_point": name}) + "\n")
    print(f"wrote {len(TASKS)} tasks to {out}")


if __name__ == "__main__":
    main()
